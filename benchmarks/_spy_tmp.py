import subprocess, sys, tempfile, json
from pathlib import Path
sys.argv = [sys.argv[0]]
from harness import side_by_side, run_client
HERE = Path(__file__).resolve().parent
with tempfile.TemporaryDirectory() as tmp:
    with side_by_side(Path(tmp), names=("kimi",)) as (setups, fake, db):
        pid = setups["kimi"].pid
        spy = subprocess.Popen([str(HERE.parent / ".venv/bin/py-spy"), "record", "-p", str(pid), "-r", "200", "--threads", "-f", "raw", "-o", "/tmp/bigspy/kimi.txt", "-d", "40"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spec = {"setups": {n: s.as_dict() for n, s in setups.items()}, "rounds": 12, "kb": 650}
        res = run_client(str(HERE / "big_prompt.py"), spec)
        spy.wait()
        print(json.dumps({t: sorted(res["results"]["kimi"][t]["ttft"]) for t in ("first", "next")}))
