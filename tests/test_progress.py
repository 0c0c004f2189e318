import io

from movierec.core.progress import Progress


def test_progress_prints_whole_lines_only_after_the_interval(monkeypatch):
    clock = iter([0.0, 1.0, 12.0, 13.0, 30.0])
    monkeypatch.setattr("movierec.core.progress.time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    p = Progress(1000, "[train] epoch 1/2", every=10, width=10, stream=out)  # clock 0.0
    p.update(100)  # 1 s: too soon
    p.update(400)  # 12 s: half done, 500/12 ≈ 42 per second
    p.update(100)  # 13 s: too soon after the last line
    p.update(400)  # 30 s: finished, so no line
    assert out.getvalue() == "[train] epoch 1/2 [#####.....]  50% 500/1.0k examples, 42/s, 12s left\n"
