"""pip-audit over a hash-pinned lock: fails on any known vulnerability, and when packages could not
be audited (pip-audit skips what it cannot look up and would pass), unless AUDIT_OFFLINE_OK=1 says
that an audit without vulnerability data is expected on this machine."""

import json
import os
import subprocess
import sys

lock = sys.argv[1]
proc = subprocess.run([sys.executable, "-m", "pip_audit", "-r", lock, "--require-hashes", "--disable-pip",
                       "--progress-spinner", "off", "--format", "json"], capture_output=True, text=True)
try:
    report = json.loads(proc.stdout)
except json.JSONDecodeError:
    sys.exit(f"pip-audit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
deps = report["dependencies"]
vulnerable = [d for d in deps if d.get("vulns")]
audited = [d for d in deps if "skip_reason" not in d]
skipped = [d["name"] for d in deps if "skip_reason" in d]
for d in vulnerable:
    print(f"{d['name']} {d['version']}: " + ", ".join(f"{v['id']} (fixed in {', '.join(v['fix_versions']) or '-'})"
                                                      for v in d["vulns"]))
print(f"pip-audit: {len(audited)} of {len(deps)} pinned packages audited, {len(vulnerable)} with known vulnerabilities")
if vulnerable:
    sys.exit(1)
if skipped:
    print(f"pip-audit: not audited (no vulnerability data reached): {', '.join(skipped)}", file=sys.stderr)
    if os.environ.get("AUDIT_OFFLINE_OK") != "1":
        sys.exit("pip-audit: set AUDIT_OFFLINE_OK=1 where PyPI's per-version JSON API (or OSV) is unreachable")
