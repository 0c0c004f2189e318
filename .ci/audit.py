"""pip-audit over a hash-pinned lock: fails on any known vulnerability, and says plainly when the
vulnerability data could not be reached (pip-audit then skips every package and would pass)."""

import json
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
for d in vulnerable:
    print(f"{d['name']} {d['version']}: " + ", ".join(f"{v['id']} (fixed in {', '.join(v['fix_versions']) or '-'})"
                                                      for v in d["vulns"]))
print(f"pip-audit: {len(audited)} of {len(deps)} pinned packages audited, {len(vulnerable)} with known vulnerabilities")
if vulnerable:
    sys.exit(1)
if not audited:
    print("pip-audit: no vulnerability data could be reached (PyPI's JSON API per version, or OSV); nothing was "
          "audited", file=sys.stderr)
