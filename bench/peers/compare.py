"""Our DIN / FinalMLP against FuxiCTR's on the same samples: AUC, GAUC, logloss, samples/s.

For one run config (``configs/<model>_<dataset>.yaml``) and N seeds:

1. builds the dataset if needed and exports it to FuxiCTR's format (export_fuxictr.py;
   identical rows and vocabulary ids on both sides);
2. translates the config's sizes to FuxiCTR's arguments (same embedding size, attention and
   MLP sizes, activations, dropout, BatchNorm, embedding L2, batch size, epochs, Adam lr,
   gradient-norm clipping, early-stopping patience, validation-AUC model selection);
3. per seed, trains ours (run_ours.py → ``recsys.runner.fit``) and FuxiCTR's (run_fuxictr.py
   in the peer venv), both on CPU with the same ``torch.set_num_threads`` and no loader workers;
4. scores both sides' test predictions with OUR metric code (recsys.metrics.ctr_metrics)
   and writes ``bench/results/peer_<dataset>_<model>.json``;
5. rewrites the ``## FuxiCTR peer`` section of docs/benchmarks.md (samples/s) and of
   docs/results.md (AUC / GAUC / logloss, mean ± std) from every peer_*.json there is.

    python bench/peers/compare.py configs/din_amazon_beauty.yaml \\
        --fuxictr-src /path/to/FuxiCTR --seeds 0 1 2 --epochs 1 --threads 1

The peer venv comes from ``bench/peers/setup_fuxictr.sh`` (default ``.peer-venv``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import tempfile
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recsys.config import RunConfig, load_config  # noqa: E402
from recsys.metrics import ctr_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = ROOT / "bench" / "results"


TMP = tempfile.gettempdir().rstrip(os.sep) + os.sep


def portable_command(argv) -> str:
    """The command with this machine's paths made relative to the repository root, so the
    recorded JSON never carries absolute paths (the peer venv and FuxiCTR checkout are
    given by the user; they are shown by name)."""
    parent = str(ROOT.parent) + os.sep
    out = []
    for arg in map(str, argv):
        if arg.startswith(str(ROOT)):
            arg = os.path.relpath(arg, ROOT)
        elif arg.startswith(parent):
            arg = os.path.join("..", os.path.relpath(arg, ROOT.parent))
        elif arg.startswith(TMP):
            arg = "$TMPDIR/" + arg[len(TMP):]
        out.append(arg)
    # quote every argument but leave $TMPDIR expandable (shlex would single-quote it)
    return " ".join(a if a.startswith("$TMPDIR/") and shlex.quote(a[1:]) == a[1:] else shlex.quote(a) for a in out)
SECTION = "## FuxiCTR peer"
FINDINGS = HERE / "findings.md"   # hand-written analysis (profiles, why a goal is missed), appended to both sections
ACTIVATIONS = {"prelu": "PReLU", "dice": "Dice", "relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}
CONTEXT = {"user": "user_id", "item": "item_id", "category": "cate_id"}


class MappingError(ValueError):
    """Our config uses a switch FuxiCTR's model has no equivalent for."""


def fuxictr_params(config: RunConfig, epochs: int, threads: int, seed: int) -> "tuple[str, dict]":
    """(FuxiCTR model name, run_fuxictr.py params) matching our config."""
    name = config.model.class_path.rpartition(".")[2]
    args = config.model_init_args
    opt, trainer = config.optimizer, config.trainer
    if opt.name != "adam" or opt.weight_decay:
        raise MappingError(f"FuxiCTR's runner uses plain Adam; the config has {opt.name} "
                           f"(weight_decay={opt.weight_decay})")
    run = {"batch_size": config.data.batch_size, "epochs": epochs, "learning_rate": opt.lr, "seed": seed,
           "num_threads": threads, "num_workers": 0,
           # FuxiCTR always clips the gradient norm; "no clipping" is an infinite bound
           "max_gradient_norm": float(trainer.gradient_clip_val or 1e12),
           "early_stop_patience": trainer.early_stopping_patience,
           "reduce_lr_on_plateau": opt.schedule == "plateau"}
    if opt.schedule not in ("none", "plateau"):
        raise MappingError(f"FuxiCTR has no {opt.schedule!r} learning-rate schedule")
    if name == "DIN":
        item, cat = args.get("item_dim", 64), args.get("category_dim", 64)
        if item != cat:
            raise MappingError(f"FuxiCTR's DIN has one embedding size; the config has item {item}, category {cat}")
        if args.get("interaction", "concat") != "concat":
            raise MappingError("FuxiCTR's DIN feeds [pooled, target] only (interaction: concat)")
        l2 = float(args.get("l2_embedding", 0.0))
        model = {"embedding_dim": item, "attention_hidden_units": list(args.get("attention_units", [36])),
                 "attention_hidden_activations": ACTIVATIONS[args.get("attention_activation", "prelu")],
                 "din_use_softmax": bool(args.get("use_softmax", False)),
                 "dnn_hidden_units": list(args.get("mlp_units", [200, 80])),
                 "dnn_activations": ACTIVATIONS[args.get("mlp_activation", "prelu")],
                 "net_dropout": float(args.get("dropout", 0.0)), "batch_norm": bool(args.get("batch_norm", False)),
                 # FuxiCTR's L2 covers whole tables; ours defaults to DIN's mini-batch-aware form
                 "embedding_regularizer": l2 if l2 > 0 else None}
        return "DIN", {**run, **model}
    if name == "FinalMLP":
        if args.get("sequence", "mean") != "mean":
            raise MappingError("FuxiCTR's FinalMLP pools histories by mean only (sequence: mean)")
        if args.get("dual_mlp", False):
            raise MappingError("compare DualMLP separately (FuxiCTR model_zoo/DualMLP)")
        l2 = float(args.get("l2_embedding", 0.01))
        bn = bool(args.get("batch_norm", True))
        model = {"embedding_dim": args.get("embedding_dim", 10),
                 "mlp1_hidden_units": list(args.get("mlp1_units", [400])), "mlp1_dropout": args.get("mlp1_dropout", 0.4),
                 "mlp1_batch_norm": bn, "mlp2_hidden_units": list(args.get("mlp2_units", [800])),
                 "mlp2_dropout": args.get("mlp2_dropout", 0.2), "mlp2_batch_norm": bn,
                 "use_fs": bool(args.get("use_fs", True)), "fs_hidden_units": list(args.get("fs_hidden_units", [800])),
                 "fs1_context": [CONTEXT[c] for c in args.get("fs1_context", [])],
                 "fs2_context": [CONTEXT[c] for c in args.get("fs2_context", [])],
                 "num_heads": args.get("num_heads", 10), "embedding_regularizer": l2 if l2 > 0 else None}
        return "FinalMLP", {**run, **model}
    raise MappingError(f"no FuxiCTR counterpart wired for {config.model.class_path}")


def run_logged(cmd: List[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n--- {log} ---\n{tail}")


def ensure_export(dataset_path: Path, out: Path, max_length: Optional[int]) -> dict:
    sys.path.insert(0, str(HERE))
    from export_fuxictr import export

    marker = out / "export.json"
    if marker.exists():
        summary = json.loads(marker.read_text())
        if summary["source"] == str(dataset_path.resolve()) and (max_length is None or summary["max_length"] == max_length):
            return summary
    return export(dataset_path, out, max_length)


def mean_std(values: List[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": int(len(arr))}


def compare(config_path: Path, fuxictr_src: Path, seeds: List[int], epochs: Optional[int], threads: int,
            peer_python: Path, work: Path, resume: bool = False, shuffle_block: Optional[int] = None) -> dict:
    from recsys.runner import open_dataset

    config = load_config(config_path)
    epochs = epochs or config.trainer.max_epochs
    dataset = open_dataset(config, build=True, progress=False)
    dataset_name = Path(dataset.path).name
    model_name = config.model.class_path.rpartition(".")[2].lower()
    export_dir = work / f"{dataset_name}_fuxictr"
    exported = ensure_export(Path(dataset.path), export_dir, config.data.max_length)
    test = np.load(export_dir / "test.npz")
    test_label, test_user = test["label"], test["user_id"]
    peer_model, base_params = fuxictr_params(config, epochs, threads, 0)

    runs = []
    for seed in seeds:
        tag = f"{dataset_name}_{model_name}_seed{seed}"
        ours_dir = work / "ours" / tag
        ours_cmd = [sys.executable, str(HERE / "run_ours.py"), str(config_path), "--seed", str(seed),
                    "--epochs", str(epochs), "--threads", str(threads), "--output-dir", str(ours_dir)]
        if shuffle_block is not None:
            ours_cmd += ["--shuffle-block", str(shuffle_block)]
        if not (resume and (ours_dir / "timing.json").exists()):
            run_logged(ours_cmd, work / "logs" / f"ours_{tag}.log")
        ours_metrics = json.loads((ours_dir / "metrics.json").read_text())
        ours_timing = json.loads((ours_dir / "timing.json").read_text())

        params = dict(base_params, seed=seed)
        params_path = work / "params" / f"fuxictr_{tag}.yaml"
        params_path.parent.mkdir(parents=True, exist_ok=True)
        params_path.write_text(json.dumps(params, indent=2))   # JSON is YAML
        peer_out = work / "fuxictr" / f"{tag}.json"
        peer_cmd = [str(peer_python), str(HERE / "run_fuxictr.py"), "--data", str(export_dir),
                    "--fuxictr-src", str(fuxictr_src), "--model", peer_model, "--params", str(params_path),
                    "--out", str(peer_out), "--workdir", str(work / "fuxictr" / f"ckpt_{tag}")]
        if not (resume and peer_out.exists()):
            run_logged(peer_cmd, work / "logs" / f"fuxictr_{tag}.log")
        peer = json.loads(peer_out.read_text())
        peer_prob = np.load(f"{peer_out}.test_pred.npy")

        # both sides scored by the same code on the same rows
        ours_pred = pq.read_table(str(ours_dir / "predictions" / "test.parquet")).to_pydict()
        ours_test = ctr_metrics(np.asarray(ours_pred["label"]), np.asarray(ours_pred["prob"]),
                                np.asarray(ours_pred["user"]))
        peer_test = ctr_metrics(test_label, peer_prob, test_user)
        runs.append({
            "seed": seed,
            "ours": {"test": ours_test, "epochs": ours_metrics.get("epochs"), "best_epoch": ours_metrics.get("best_epoch"),
                     "train_samples_per_second": ours_timing["train_samples_per_second"],
                     "train_seconds": ours_timing["train_seconds"], "train_samples": ours_timing["train_samples"],
                     "fit_samples_per_second_incl_validation": ours_metrics.get("train_samples_per_second"),
                     "parameters": ours_metrics.get("parameters"), "torch_threads": ours_timing["torch_threads"],
                     "command": portable_command(ours_cmd)},
            "fuxictr": {"test": peer_test, "test_fuxictr_side": peer["splits"]["test"], "epochs": peer["epochs"],
                        "train_samples_per_second": peer["train_samples_per_second"],
                        "train_seconds": peer["train_seconds"], "train_samples": peer["train_samples"],
                        "parameters": peer["parameters"], "torch_threads": peer["torch_threads"],
                        "command": portable_command(peer_cmd)},
        })

    summary = {}
    for side in ("ours", "fuxictr"):
        summary[side] = {key: mean_std([r[side]["test"][key] for r in runs]) for key in ("auc", "gauc", "logloss")}
        summary[side]["train_samples_per_second"] = mean_std([r[side]["train_samples_per_second"] for r in runs])
    ours_auc, peer_auc = summary["ours"]["auc"], summary["fuxictr"]["auc"]
    speedup = summary["ours"]["train_samples_per_second"]["mean"] / summary["fuxictr"]["train_samples_per_second"]["mean"]
    result = {
        "dataset": dataset_name, "model": model_name, "fuxictr_model": peer_model, "config": str(config_path),
        "protocol": dataset.protocol, "rows": exported["rows"], "max_length": exported["max_length"],
        "seeds": seeds, "epochs": epochs, "torch_threads": threads, "batch_size": config.data.batch_size,
        "ours_shuffle_block": shuffle_block or "loader default (65,536-sample blocks)",
        "fuxictr_params": base_params, "runs": runs, "summary": summary,
        "speedup": round(speedup, 3),
        "goals": {"auc_at_least_theirs_within_one_std": bool(ours_auc["mean"] >= peer_auc["mean"] - max(
                      ours_auc["std"], peer_auc["std"])),
                  "throughput_at_least_1.5x": bool(speedup >= 1.5)},
        "machine": machine(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + portable_command(sys.argv),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"peer_{dataset_name}_{model_name}.json").write_text(json.dumps(result, indent=2))
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU box ({cpu}), no GPU; torch CPU"


def fmt(stat: dict, digits: int = 4) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def results_section(results: List[dict]) -> str:
    lines = [SECTION, "",
             "Same samples through both libraries (our built dataset exported row for row by "
             "`bench/peers/export_fuxictr.py`; same vocabulary ids, embedding size, attention/MLP sizes, batch size, "
             "epochs, Adam lr, clipping, validation-AUC model selection). Test metrics of both sides computed by "
             "`recsys.metrics.ctr_metrics` from each side's predictions; mean ± std over seeds (std with n − 1). "
             "Written by `bench/peers/compare.py`.", "",
             "| dataset | model | library | seeds | epochs | test AUC | test GAUC | test logloss | AUC goal met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for side, label in (("ours", "recsys"), ("fuxictr", "FuxiCTR 2.3.10")):
            s = r["summary"][side]
            goal = ("yes" if r["goals"]["auc_at_least_theirs_within_one_std"] else "**no**") if side == "ours" else ""
            lines.append(f"| {r['dataset']} | {r['model']} | {label} | {len(r['seeds'])} | {r['epochs']} | "
                         f"{fmt(s['auc'])} | {fmt(s['gauc'])} | {fmt(s['logloss'])} | {goal} |")
    lines += ["", "Commands (`--fuxictr-src` is a checkout of FuxiCTR v2.3.10; the peer venv comes from "
              "`bench/peers/setup_fuxictr.sh`):", ""] + [f"- `{r['command']}` ({r['date']})" for r in results] + [""]
    return "\n".join(lines + findings())


def benchmarks_section(results: List[dict]) -> str:
    lines = [SECTION, "",
             "Training throughput on CPU, same samples and sizes on both sides (see docs/results.md, FuxiCTR peer). "
             "samples/s = training samples / wall time of the training epochs only (validation passes timed and "
             "subtracted on both sides; data loading included; no loader worker processes; the same "
             "`torch.set_num_threads` on both sides). Both libraries run one after the other, one run at a time; "
             "what else the machine ran is in the status note below. Goal: ours ≥ 1.5× FuxiCTR.", "",
             "| dataset | model | threads | batch | recsys samples/s | FuxiCTR samples/s | speed-up | goal met | date |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['dataset']} | {r['model']} | {r['torch_threads']} | {r['batch_size']} | "
                     f"{fmt(s['ours']['train_samples_per_second'], 0)} | "
                     f"{fmt(s['fuxictr']['train_samples_per_second'], 0)} | {r['speedup']:.2f}× | "
                     f"{'yes' if r['goals']['throughput_at_least_1.5x'] else '**no**'} | {r['date']} |")
    machines = sorted({r["machine"] for r in results})
    lines += ["", "Machine: " + "; ".join(machines), "",
              "Commands (`--fuxictr-src` is a checkout of FuxiCTR v2.3.10):", ""]
    lines += [f"- `{r['command']}`" for r in results] + [""]
    return "\n".join(lines + findings())


def findings() -> List[str]:
    return [FINDINGS.read_text().rstrip("\n"), ""] if FINDINGS.exists() else []


def update_docs(results_dir: Path = RESULTS, docs: Path = ROOT / "docs") -> None:
    """Rewrite the ``fuxictr-peer`` sections of docs/results.md and docs/benchmarks.md."""
    from bench.docs_section import write_section   # the repository root is on sys.path (above)
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("peer_*.json"))
               if not p.name.startswith("peer_recbole_")]   # run_recbole.py's: another shape, its own README section
    if not results:
        return
    source = "bench/peers/compare.py"
    write_section(docs / "results.md", "fuxictr-peer", results_section(results), source, title="# Results")
    write_section(docs / "benchmarks.md", "fuxictr-peer", benchmarks_section(results), source)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="our run config, e.g. configs/din_amazon_beauty.yaml")
    parser.add_argument("--fuxictr-src", help="FuxiCTR checkout (git clone --depth 1 --branch v2.3.10 "
                                              "https://github.com/reczoo/FuxiCTR)")
    parser.add_argument("--peer-venv", default=str(ROOT / ".peer-venv"), help="from setup_fuxictr.sh")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's trainer.max_epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--work", default=str(ROOT / "runs" / "peers"), help="exports, run dirs, logs")
    parser.add_argument("--resume", action="store_true",
                        help="reuse a seed's finished run (timing.json / FuxiCTR JSON in --work) instead of rerunning it")
    parser.add_argument("--shuffle-block", type=int, default=None,
                        help="our loader's shuffle block; >= the training rows = a full permutation as FuxiCTR's")
    parser.add_argument("--docs-only", action="store_true", help="only rewrite the docs sections from bench/results")
    args = parser.parse_args(argv)
    if not args.docs_only:
        if not args.config or not args.fuxictr_src:
            parser.error("config and --fuxictr-src are required (unless --docs-only)")
        peer_python = Path(args.peer_venv) / "bin" / "python"
        if not peer_python.exists():
            parser.error(f"{peer_python} missing: run bench/peers/setup_fuxictr.sh {args.peer_venv}")
        os.chdir(ROOT)   # configs name data paths relative to the repository root
        result = compare(Path(args.config), Path(args.fuxictr_src), args.seeds, args.epochs, args.threads,
                         peer_python, Path(args.work), args.resume, args.shuffle_block)
        print(json.dumps({"summary": result["summary"], "speedup": result["speedup"], "goals": result["goals"]},
                         indent=2))
    update_docs()
    return 0


if __name__ == "__main__":
    sys.exit(main())
