"""Device check for the GPU gauge: NVML figures through GPUGauge, moving while the main thread computes."""

import time

from farm_jupyter.sessions import Session
from farm_jupyter.widgets import GPUGauge

s = Session(config={"env": "test"})
g = GPUGauge(s, interval=0.2)
print("stats:", s.gpu().model_dump_json()[:600])
g.start()
try:
    import torch

    x = torch.empty(int(8 * 2**30), dtype=torch.uint8, device="cuda")  # 8 GiB held by this process
    y = torch.randn(8192, 8192, device="cuda")
    t = time.time()
    while time.time() - t < 3:  # the "other cell" keeps the GPU busy
        y = y @ y
        y = y / y.norm()
        torch.cuda.synchronize()
except Exception as exc:  # noqa: BLE001 - a check script reports whatever went wrong
    print("torch part skipped:", type(exc).__name__, exc)
    time.sleep(3)
print("updates in ~3 s:", g.updates)
print("summary:", g.summary())
for bars in g._bars:
    print("head:", bars["head"].value[:300])
    print(
        "util bar:", bars["util"].bar.value, "mem bar:", round(bars["mem"].bar.value, 1), bars["mem"].text.value[-60:]
    )
    if "procs" in bars:
        print("procs:", bars["procs"].value[:300])
g.close()
time.sleep(0.3)
print("pending after close:", s.aio.runtime.pending_tasks())
