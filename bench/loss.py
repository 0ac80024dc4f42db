"""Closed-form O(B*C) wMSE against the pairwise O(B*C^2) form: time and peak memory.

    python bench/loss.py                 # CPU, and CUDA when present
    python bench/loss.py --sizes 128x10 512x1000 --min-time 2

Times are medians of forward+backward measured side by side in this process. Peak
memory is measured in a fresh subprocess per cell: on CUDA the allocator's peak above
the inputs, on the CPU the growth of the resident set's high-water mark (Linux
/proc/self/clear_refs) above the inputs. Prints a Markdown table; asserts nothing.
"""

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from losses import wmse_loss  # noqa: E402
from losses.pairwise_oracle import wmse_loss_pairwise  # noqa: E402

FORMS = {"closed": wmse_loss, "pairwise": wmse_loss_pairwise}
DEFAULT_SIZES = ["128x10", "128x100", "128x1000", "512x1000"]


def make_inputs(batch, classes, device):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(batch, classes, generator=generator).to(device).requires_grad_()
    teacher = torch.randn(batch, classes, generator=generator).to(device).requires_grad_()
    weights = torch.softmax(torch.randn(batch, classes, generator=generator), 1).to(device)
    return student, teacher, weights


def forward_backward(form, student, teacher, weights):
    loss = FORMS[form](student, teacher, weights)
    loss.backward()
    student.grad = teacher.grad = None


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(form, inputs, device, min_time, min_repeats=3):
    forward_backward(form, *inputs)  # warm-up
    synchronize(device)
    samples, started = [], time.perf_counter()
    while len(samples) < min_repeats or time.perf_counter() - started < min_time:
        begin = time.perf_counter()
        forward_backward(form, *inputs)
        synchronize(device)
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def _resident_high_water_kib():
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure_peak_bytes(form, batch, classes, device):
    """Runs in a fresh process (see main): peak bytes above the inputs of one forward+backward."""
    # A tiny call first, so that autograd's and the thread pools' one-time allocations
    # are not counted as the loss's memory.
    forward_backward(form, *make_inputs(2, 2, device))
    inputs = make_inputs(batch, classes, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        forward_backward(form, *inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    base = _resident_high_water_kib()
    forward_backward(form, *inputs)
    return (_resident_high_water_kib() - base) * 1024


def peak_bytes_in_subprocess(form, batch, classes, device):
    command = [sys.executable, __file__, "--peak-worker", form, str(batch), str(classes), device]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return None  # e.g. out of memory: reported as such in the table
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def format_bytes(count):
    if count is None:
        return "failed (OOM?)"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BxC cells (default: %(default)s)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per cell and form")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--peak-worker", nargs=4, metavar=("FORM", "B", "C", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.peak_worker:
        form, batch, classes, device = args.peak_worker
        print(json.dumps({"peak_bytes": measure_peak_bytes(form, int(batch), int(classes), device)}))
        return

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else "")
    )
    print("forward+backward of wMSE in float32; time = median; peak = memory above the inputs\n")
    print("| device | B x C | closed form | pairwise | speed-up | peak closed | peak pairwise |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for device in devices:
        for size in args.sizes:
            batch, classes = (int(v) for v in size.lower().split("x"))
            inputs = make_inputs(batch, classes, device)
            closed = median_seconds("closed", inputs, device, args.min_time)
            try:
                pairwise = median_seconds("pairwise", inputs, device, args.min_time)
            except torch.OutOfMemoryError:
                pairwise = None
            del inputs
            peaks = [peak_bytes_in_subprocess(form, batch, classes, device) for form in ("closed", "pairwise")]
            pairwise_text = "OOM" if pairwise is None else f"{pairwise * 1e3:.3f} ms"
            speedup = "-" if pairwise is None else f"{pairwise / closed:.0f}x"
            print(
                f"| {device} | {batch} x {classes} | {closed * 1e3:.3f} ms | {pairwise_text} | {speedup} "
                f"| {format_bytes(peaks[0])} | {format_bytes(peaks[1])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
