"""Benchmark of op 1 (DIN activation-unit attention): time, peak memory and achieved
bandwidth of each implementation, all in one run.

Implementations:
  naive      eager FuxiCTR form: builds [B, L, 4D] = [q, k, q−k, q⊙k], then the MLP
  reference  the decomposed, unchunked PyTorch reference (kernels.reference; exact, for tests)
  chunked    the chunked autograd.Function (the CPU path, ``backend="torch"``): no [B, L, H]
             tensor kept for backward
  compile    torch.compile of the reference
  triton     the fused Triton kernel (CUDA only; the interpreter is not a speed path)

Each (implementation, B, L, D) case runs in a fresh subprocess so peak memory is its own:
on CUDA torch.cuda.max_memory_allocated, on CPU the rise of the process's peak resident
set (ru_maxrss) over the inputs, after one tiny warm-up call of the same method (library start-up
is not the shape's memory). Time is the median of several calls after a warm-up.
Bandwidth = minimal bytes moved (keys and values read once, output written) / time.

    python bench/bench_kernels.py            # grid for this device
    python bench/bench_kernels.py --quick                                 # smoke run
    python bench/bench_kernels.py --shapes 1024x50x128 --hidden 36 --activation prelu --threads 1 \
        --methods naive,reference,chunked --out bench/results/kernels_cpu_din.json   # DIN training shape
Writes bench/results/kernels_<device>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.kernels.din_attention import din_attention  # noqa: E402
from recsys.kernels.din_attention import HiddenLayer  # noqa: E402
from recsys.kernels.reference.din_attention import din_attention_padded  # noqa: E402
from recsys.kernels.reference.din_attention_chunked import din_attention_chunked  # noqa: E402

HIDDEN = (80, 40)      # DIN official code's attention MLP (default; --hidden overrides)
ACTIVATION = "sigmoid"


def make_inputs(batch, length, dim, device, dtype, seed=0, hidden_sizes=HIDDEN, activation=ACTIVATION):
    torch.manual_seed(seed)
    keys = torch.randn(batch, length, dim, device=device, dtype=dtype, requires_grad=True)
    query = torch.randn(batch, dim, device=device, dtype=dtype, requires_grad=True)
    # lengths spread over (L/2, L]: realistic mix, padding exists
    lengths = torch.randint(length // 2 + 1, length + 1, (batch,), device=device)
    hidden, fan_in = [], 4 * dim
    for width in hidden_sizes:
        slope = torch.full((width,), 0.25, device=device, dtype=dtype, requires_grad=True) if activation == "prelu" else None
        hidden.append(HiddenLayer(weight=(torch.randn(fan_in, width, device=device, dtype=dtype) * fan_in ** -0.5)
                                  .requires_grad_(), bias=torch.zeros(width, device=device, dtype=dtype,
                                                                      requires_grad=True), activation=activation,
                                  prelu_weight=slope))
        fan_in = width
    out_weight = torch.randn(fan_in, device=device, dtype=dtype, requires_grad=True)
    out_bias = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
    return query, keys, lengths, hidden, out_weight, out_bias


def implementation(name):
    if name == "naive":   # the kernels' one copy of FuxiCTR's [B, L, 4D] form
        return lambda q, k, l, h, w, b: din_attention(q, k, l, hidden=h, out_weight=w, out_bias=b, backend="naive")
    if name == "reference":
        return lambda q, k, l, h, w, b: din_attention_padded(q, k, l, h, w, b)
    if name == "chunked":
        return lambda q, k, l, h, w, b: din_attention_chunked(q, k, l, h, w, b)
    if name == "compile":
        return torch.compile(lambda q, k, l, h, w, b: din_attention_padded(q, k, l, h, w, b), dynamic=False)
    if name == "triton":
        return lambda q, k, l, h, w, b: din_attention(q, k, l, hidden=h, out_weight=w, out_bias=b, backend="triton")
    raise ValueError(name)


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(name, batch, length, dim, device, dtype, repeats, mode, hidden_sizes=HIDDEN, activation=ACTIVATION):
    """One implementation, one shape, one mode ("forward" | "forward_backward"), in this
    (fresh) process, so the peak-memory high-water mark is this case's alone."""
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    inputs = make_inputs(batch, length, dim, device, dtype, hidden_sizes=hidden_sizes, activation=activation)
    fn = implementation(name)
    params = [inputs[0], inputs[1], inputs[4], inputs[5]] + [t for h in inputs[3] for t in (h.weight, h.bias, h.prelu_weight)
                                                             if t is not None]

    def forward():
        with torch.no_grad():
            return fn(*inputs)

    def forward_backward():
        out = fn(*inputs)
        grads = torch.autograd.grad(out.sum(), params)
        return grads

    # one tiny call first: library / autograd-engine start-up must not count as this shape's memory
    tiny = make_inputs(2, 4, dim, device, dtype, hidden_sizes=hidden_sizes, activation=activation)
    out = fn(*tiny)
    if mode == "forward_backward":
        out.sum().backward()
    del tiny, out
    result = {}
    for mode, call in [m for m in (("forward", forward), ("forward_backward", forward_backward)) if m[0] == mode]:
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = peak_rss_bytes()
        call()      # first call: compile / autotune, and the memory measurement
        sync()
        peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()) - base
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - start)
        result[mode] = {"time_ms": 1e3 * statistics.median(times), "peak_memory_mb": max(peak, 0) / 2 ** 20}
    element = torch.tensor([], dtype=dtype).element_size()
    moved = int(inputs[2].sum()) * dim * element * 1 + batch * dim * element * 2   # keys read once (values = keys), q, out
    result[mode]["bandwidth_gbps"] = moved / (result[mode]["time_ms"] * 1e-3) / 1e9
    return result


def grid(device, quick, shapes=None):
    if shapes:
        return [tuple(int(x) for x in shape.split("x")) for shape in shapes.split(",")]
    if quick:
        return [(64, 100, 32)]
    if device == "cuda":
        return [(b, l, d) for b in (256, 2048) for l in (100, 1000, 10000) for d in (32, 64, 128)]
    # CPU (2 cores shared with other jobs): the goal's shapes, B = 256, D = 64, L = 100 and 1 000
    return [(256, l, 64) for l in (100, 1000)]


def markdown(report) -> str:
    """The ## Kernels section of docs/benchmarks.md for one report."""
    lines = ["## Kernels", "",
             f"DIN activation-unit attention (op 1), attention MLP {list(report['hidden'])} {report['activation']}, "
             f"{report['dtype']}, lengths uniform in (L/2, L]. Device: {report['device']} ({report['device_name']}, "
             f"{report['cpu_count']} CPU cores, torch threads: {report.get('threads', 'default')}), torch {report['torch']}, {report['date']}.",
             f"Command: `{report['command']}` → `bench/results/kernels_{report['device']}.json`.",
             "Peak memory: CUDA max allocated, or on CPU the rise of the process's peak RSS over the inputs "
             "(fresh subprocess per case, after one tiny warm-up call). Rewriting this section "
             "(`--update-docs`) drops the notes below the table.", "",
             "Bandwidth: minimal bytes moved by the forward (keys read once, query and output) / forward time.", "",
             "| B | L | D | method | fwd ms | fwd GB/s | fwd peak MB | fwd+bwd ms | fwd+bwd peak MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        f, fb = row.get("forward", {}), row.get("forward_backward", {})
        cell = lambda d, k: f"{d[k]:.1f}" if k in d else d.get("error", "—")[:60]  # noqa: E731
        bandwidth = f"{f['bandwidth_gbps']:.2f}" if "bandwidth_gbps" in f else "—"
        lines.append(f"| {row['B']} | {row['L']} | {row['D']} | {row['method']} | {cell(f, 'time_ms')} | {bandwidth} | "
                     f"{cell(f, 'peak_memory_mb')} | {cell(fb, 'time_ms')} | {cell(fb, 'peak_memory_mb')} |")
    if report["device"] != "cuda":
        lines += ["", "GPU numbers (Triton kernel, bandwidth against peak, the H100 goals) are unmeasured: "
                  "no GPU was available. Run the same command on a CUDA machine for the full grid."]
    return "\n".join(lines) + "\n"


def update_docs(report) -> None:
    """Rewrite the ``kernels`` section of docs/benchmarks.md (bench/docs_section.py)."""
    from docs_section import write_section   # bench/ is the script's folder
    write_section(REPO / "docs" / "benchmarks.md", "kernels", markdown(report), "bench/bench_kernels.py --update-docs")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small shape (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=None, help="comma list; default naive,reference,compile(+triton on cuda)")
    parser.add_argument("--shapes", default=None, help="comma list of BxLxD (default: the device's grid)")
    parser.add_argument("--hidden", default=",".join(map(str, HIDDEN)), help="attention MLP widths, e.g. 80,40")
    parser.add_argument("--activation", default=ACTIVATION, choices=["sigmoid", "relu", "prelu"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)   # internal: run one case, print JSON
    parser.add_argument("--out", default=None)
    parser.add_argument("--update-docs", default=None, metavar="JSON",
                        help="only rewrite the ## Kernels section of docs/benchmarks.md from a results JSON")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    hidden_sizes = tuple(int(x) for x in args.hidden.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.update_docs:
        update_docs(json.loads(Path(args.update_docs).read_text()))
        return
    if args.case:
        name, b, l, d, mode = args.case.split(",")
        print(json.dumps(run_case(name, int(b), int(l), int(d), args.device, dtype, args.repeats, mode,
                                  hidden_sizes, args.activation)))
        return
    methods = (args.methods.split(",") if args.methods else
               ["naive", "reference", "chunked", "compile"] + (["triton"] if args.device == "cuda" else []))
    rows = []
    for batch, length, dim in grid(args.device, args.quick, args.shapes):
        for name in methods:
            row = {"method": name, "B": batch, "L": length, "D": dim}
            for mode in ("forward", "forward_backward"):
                cmd = [sys.executable, __file__, "--case", f"{name},{batch},{length},{dim},{mode}",
                       "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats),
                       "--hidden", args.hidden, "--activation", args.activation]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                    if proc.returncode == 0:
                        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                    else:
                        row[mode] = {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip()
                                     else "failed"}
                except subprocess.TimeoutExpired:
                    row[mode] = {"error": "timed out after 900 s"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}"
    report = {"op": "din_attention", "device": args.device, "device_name": device_name,
              "cpu_count": __import__("os").cpu_count(), "dtype": args.dtype, "hidden": hidden_sizes,
              "activation": args.activation, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python"] + sys.argv), "rows": rows}
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"kernels_{args.device}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    if not args.quick and args.out is None:
        update_docs(report)


if __name__ == "__main__":
    main()
