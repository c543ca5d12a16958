"""The `recsys` command: data, fit, evaluate, index, retrieve, recommend, export, report, quickstart."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import yaml

EPILOG = "Docs: README.md, docs/cli.md, docs/data.md. Each subcommand has its own --help."


def _overrides(pairs: List[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"error: --set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_fit(args) -> None:
    from .runner import fit_from_yaml
    overrides = _overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    config = args.config
    if args.resume:                      # `fit --resume RUN`: the run's own config unless one is given
        if config is None:
            config = str(Path(args.resume) / "config.yaml")
        else:
            overrides["output_dir"] = args.resume
    elif config is None:
        from recsys.errors import ConfigError
        raise ConfigError("recsys fit: give a run CONFIG (or --resume RUN to continue an interrupted run)")
    out = fit_from_yaml(config, overrides, progress=not args.quiet, overwrite=args.overwrite,
                        resume=bool(args.resume))
    metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    test = metrics.get("splits", {}).get("test", {})
    nan = float("nan")
    if metrics.get("family") == "retrieval":
        print(f"run: {out}\ntest " + "  ".join(f"{key} {test.get(key, nan):.4f}" for key in
                                               ("recall@20", "ndcg@20", "recall@50", "ndcg@50")))
    else:
        print(f"run: {out}\ntest AUC {test.get('auc', nan):.4f}  GAUC {test.get('gauc', nan):.4f}  "
              f"logloss {test.get('logloss', nan):.4f}")


def cmd_evaluate(args) -> None:
    from .runner import evaluate
    result = evaluate(args.run, splits=args.split)
    print(json.dumps(result["splits"], indent=2))


def cmd_report(args) -> None:
    from .report import write_report
    path = write_report([Path(r) for r in args.runs], Path(args.out), title=args.title)
    print(f"report: {path}\nmarkdown: {path.with_name('report.md')}")


def cmd_quickstart(args) -> None:
    from .quickstart import run_quickstart
    report = run_quickstart(Path(args.out), rows=args.rows, epochs=args.epochs, progress=not args.quiet,
                            cascade=not args.rankers_only)
    print(f"\nreport: {report.resolve()}")
    print(report.with_name("report.md").read_text())


def cmd_index(args) -> None:
    from .retrieval.index import IndexConfig, build_run_index, read_stamp
    raw = {}
    if args.config:
        path = Path(args.config)
        if not path.exists():
            raise FileNotFoundError(f"index config {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            from recsys.errors import ConfigError
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        raw = dict(raw) if isinstance(raw, dict) else raw
    if args.kind:
        raw = dict(raw or {}, kind=args.kind)
    for key in ("nlist", "nprobe", "m", "ef_construction", "ef_search"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    config = IndexConfig.from_dict(raw, args.config or "recsys index")
    path = build_run_index(Path(args.run), config, name=args.name, threads=args.threads)
    stamp = read_stamp(path)
    print(f"index: {path} ({stamp['factory']}, {stamp['num_items'] - stamp['first_item']} items, "
          f"{stamp['dim']}-d, built in {stamp['build_seconds']} s)")


def cmd_retrieve(args) -> None:
    from .retrieval.batch import RetrieveOptions, retrieve
    options = RetrieveOptions(top_n=args.top_n, per_interest=args.per_interest, exclude_seen=not args.keep_seen,
                              diversity=args.diversity, index=args.index, nprobe=args.nprobe,
                              ef_search=args.ef_search, chunk_users=args.chunk, threads=args.threads)
    summary = retrieve(Path(args.run), Path(args.users), Path(args.out), options, overwrite=args.overwrite,
                       progress=not args.quiet)
    counts = summary["counts"]
    print(f"candidates: {args.out} ({counts['candidates']} rows for {counts['users']} users, "
          f"{summary['users_per_second']} users/s; index {summary['index']['factory']})\n"
          f"retrieved {counts['retrieved']}, popularity fallback: unknown users {counts['unknown_users']}, "
          f"no history {counts['no_history']}; fewer than top-n {counts['short_users']}; given histories "
          f"{counts['history_rows']} (unknown items {counts['unknown_history_items']})"
          + (f"; resumed {summary['resumed_parts']} chunks" if summary["resumed_parts"] else ""))


def cmd_export(args) -> None:
    from recsys.serving.export import export_artifact
    out = export_artifact(Path(args.run), Path(args.out), fine=args.fine, coarse=args.coarse, index=args.index,
                          overwrite=args.overwrite)
    manifest = json.loads((out / "manifest.json").read_text())
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    print(f"artifact: {out} (components {', '.join(manifest['components'])}; {len(manifest['files'])} files, "
          f"{size / 1e6:.1f} MB, format version {manifest['format_version']})")


def cmd_data_generate(args) -> None:
    from recsys.data_pipelines.synthetic import (SyntheticConfig, generate_amazon, generate_userbehavior,
                                                 shift_regimes_path, write_shift_split)
    from recsys.errors import ConfigError
    try:
        config = SyntheticConfig(n_rows=args.rows, seed=args.seed, n_items=args.items, n_categories=args.categories,
                                 max_events=args.max_events, mean_events=args.mean_events,
                                 interest_coupling=args.interest_coupling)
        if args.shift_split and not args.interest_coupling:
            raise ValueError("--shift-split needs --interest-coupling > 0 (the shift is from coupled to independent "
                             "interests)")
    except ValueError as exc:   # impossible settings (more categories than items, ...)
        raise ConfigError(f"recsys data generate: {exc}") from None
    if args.layout == "userbehavior":
        path = generate_userbehavior(Path(args.out), args.rows, config=config, progress=True)
        print(f"wrote {args.rows} rows to {path}")
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        reviews, meta = generate_amazon(out / "reviews.json", out / "meta.json", config=config)
        print(f"wrote {reviews} and {meta}")
    if args.shift_split:
        try:
            counts = write_shift_split(Path(args.shift_split), config, args.shift_test_share, args.shift_valid_share)
        except ValueError as exc:
            raise ConfigError(f"recsys data generate: {exc}") from None
        print(f"wrote the user split {args.shift_split} (protocol.user_split_file): {counts}; "
              f"each user's regime in {shift_regimes_path(Path(args.shift_split))}")


def cmd_data_build(args) -> None:
    from recsys.data_pipelines.build import ensure_dataset, load_manifest
    from recsys.data_pipelines.config import load_data_config
    out, status = ensure_dataset(load_data_config(Path(args.config)), overwrite=args.overwrite,
                                 progress=not args.quiet)
    manifest = load_manifest(out)
    took = f"built in {manifest['build_seconds']} s" if status == "built" else \
        "reused: config and input files unchanged since it was built"
    print(f"dataset: {out} ({status})\nusers {manifest['users']}, events {manifest['events']}, samples "
          f"{manifest['split_samples']}, vocab sizes {manifest['vocab_sizes']}, {took}")


def cmd_data_embed_text(args) -> None:
    from recsys.data_pipelines.config import load_data_config
    from recsys.data_pipelines.text_embedding import embed_item_text
    config = load_data_config(Path(args.config))
    summary = embed_item_text(config, args.columns, args.name, dim=args.dim, seed=args.seed)
    print(f"{config.output}: item field {args.name!r}, {summary['dim']}-d {summary['method']} vectors of "
          f"{summary['columns']} for {summary['items_with_text']} items ({summary['items_without_text']} without "
          f"text: zero vectors), explained variance {summary['explained_variance_ratio']}")


def cmd_data_inspect(args) -> None:
    from recsys.data_pipelines.build import load_manifest
    manifest = load_manifest(args.dataset)
    manifest.pop("config", None)
    print(json.dumps(manifest, indent=2))


def cmd_recommend(args) -> None:
    from .retrieval.recommend import load_recommend_config, recommend
    config = load_recommend_config(Path(args.config), _overrides(args.set))
    summary = recommend(config, Path(args.users), Path(args.out), overwrite=args.overwrite, progress=not args.quiet)
    counts = summary["counts"]
    shorts = ", ".join(f"{stage} {counts[stage + '_short']}" for stage in summary["stages"])
    print(f"recommendations: {args.out} ({counts['recommended']} rows for {counts['users']} users, stages "
          f"{' -> '.join(summary['stages'])}, {summary['users_per_second']} users/s)\n"
          f"ranked {counts['retrieved']}, popularity fallback: unknown users {counts['unknown_users']}, "
          f"no history {counts['no_history']}; users with fewer than asked: {shorts} (final {counts['short_users']}); "
          f"given histories {counts['history_rows']} (unknown items {counts['unknown_history_items']})"
          + (f"; resumed {summary['resumed_parts']} chunks" if summary["resumed_parts"] else ""))



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description="CTR prediction and multi-interest modelling: "
                                     "build data, train, evaluate and report.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("quickstart", help="the whole platform on generated data: rankers, retrieval, cascade, "
                       "serving artifact, report",
                       description="Runs the main job end to end on built-in generated data (no download): "
                       "generates UserBehavior-layout logs with planted interests; trains the pooled-history "
                       "baseline, DIN, FinalMLP and HCN on DIN-protocol samples; trains ComiRec-SA on the "
                       "leave-one-out samples of the same events beside popularity and co-occurrence baselines; "
                       "builds the FAISS index, runs the cascade (retrieval, + DIN, + HCN + DIN) for the test "
                       "users, exports the serving artifact and answers one request through recsys.serving; "
                       "writes an HTML report with every number.")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--rows", type=int, default=600_000, help="generated events (default: 600000)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per model (default: 1)")
    p.add_argument("--rankers-only", action="store_true",
                   help="stop after the rankers (no retrieval, cascade or serving step)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("fit", help="train a model from a YAML run config",
                       description="Trains the model of a run config (configs/*.yaml), selects the best epoch on the "
                       "validation split, exports model.safetensors and writes metrics.json with test metrics.")
    p.add_argument("config", nargs="?", help="run config YAML (optional with --resume: the run's own)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set trainer.max_epochs=3 (repeatable)")
    p.add_argument("--seed", type=int, help="override the seed")
    p.add_argument("--output-dir", help="override output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the output directory (refused without it)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint "
                   "(the config must be the one it started with)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="score a finished run on a split",
                       description="Reloads a run's safetensors weights and scores the given splits; updates metrics.json.")
    p.add_argument("run", help="run directory written by `recsys fit`")
    p.add_argument("--split", nargs="+", default=["test"], choices=["train", "valid", "test"],
                   help="splits to score (default: test)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="HTML + Markdown report of one or more runs",
                       description="Writes report.html (ROC, calibration, training curves, side-by-side table) "
                       "and report.md for the given run directories.")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="runs/report", help="output directory (default: runs/report)")
    p.add_argument("--title", default="recsys report", help="page title")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("index", help="build a FAISS index over a retrieval run's item tower",
                       description="Builds RUN/index/NAME.faiss (exact flat, IVF or HNSW, inner product) from the "
                       "run's weights alone, stamped with the weights' sha256 and the item vocabulary (RUN/index/"
                       "NAME.json). Parameters come from --config (YAML: kind, nlist, nprobe, m, ef_construction, "
                       "ef_search) and the flags, flags last. See docs/retrieval.md.")
    p.add_argument("run", help="run directory of a retrieval model (written by `recsys fit`)")
    p.add_argument("--config", help="index config YAML")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"], help="index kind (default: flat, or the config's)")
    p.add_argument("--name", help="index name (default: the kind)")
    p.add_argument("--nlist", type=int, help="ivf: k-means cells (default 4*sqrt(items))")
    p.add_argument("--nprobe", type=int, help="ivf: cells searched (default 32)")
    p.add_argument("--m", type=int, help="hnsw: graph degree (default 32)")
    p.add_argument("--ef-construction", dest="ef_construction", type=int, help="hnsw: build beam (default 200)")
    p.add_argument("--ef-search", dest="ef_search", type=int, help="hnsw: search beam (default 256)")
    p.add_argument("--threads", type=int, help="FAISS threads (default: all)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("retrieve", help="batch candidate retrieval: users -> (user, rank, item, score) Parquet",
                       description="Streams the users file (Parquet: a 'user' column of raw user ids, optional "
                       "'history' lists of raw item ids) in chunks, retrieves each user's top-N items through the "
                       "run's FAISS index (K interests x per-interest N, merged, seen items left out), writes OUT "
                       "atomically; a killed run resumes when started again with the same arguments. "
                       "See docs/retrieval.md.")
    p.add_argument("run", help="run directory of a retrieval model")
    p.add_argument("--users", required=True, help="users Parquet file")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--top-n", dest="top_n", type=int, default=200, help="candidates per user (default 200)")
    p.add_argument("--per-interest", dest="per_interest", type=int, help="items searched per interest (default: top-n)")
    p.add_argument("--index", default="flat", help="index name in RUN/index (default flat, built when missing)")
    p.add_argument("--nprobe", type=int, help="override the IVF index's nprobe")
    p.add_argument("--ef-search", dest="ef_search", type=int, help="override the HNSW index's efSearch")
    p.add_argument("--diversity", type=float, default=0.0, help="ComiRec's lambda for category diversity (default 0)")
    p.add_argument("--keep-seen", dest="keep_seen", action="store_true",
                   help="do not leave out the items of the user's history")
    p.add_argument("--chunk", type=int, default=4096, help="users per chunk (default 4096)")
    p.add_argument("--threads", type=int, help="FAISS and torch threads (default: torch's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("recommend", help="the cascade in batch: users -> retrieval -> coarse -> fine ranked lists",
                       description="Runs the recommendation cascade of CONFIG (YAML: retrieval: {run, index, n, ...}, "
                       "coarse: {run, m} or null, fine: {run, n} or null, chunk_users, threads) over the users file "
                       "(the format of `recsys retrieve`) in chunks and writes OUT (user, rank, item, score, one "
                       "score column per stage, fallback) atomically; a killed run resumes when started again with "
                       "the same arguments. See docs/cascade.md.")
    p.add_argument("config", help="recommend config YAML (configs/cascade/*.yaml)")
    p.add_argument("--users", required=True, help="users Parquet file")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set fine.n=10 or --set coarse=null (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("export", help="a run (or a retrieval run and its rankers) -> a serving artifact",
                       description="Writes a self-contained directory for recsys.serving: weights (safetensors), "
                       "model.json, the vocabularies, item -> category and user side tables, the FAISS index of a "
                       "retrieval run, and a manifest with the sha256 of every file; written to a temporary name and "
                       "renamed. --fine/--coarse bundle ranking runs with a retrieval run for the Recommender (all "
                       "trained on the same vocabularies). See docs/serving.md.")
    p.add_argument("run", help="run directory (ranking, or retrieval with --fine/--coarse)")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--fine", help="ranking run for the fine stage (Recommender bundle)")
    p.add_argument("--coarse", help="ranking run for the coarse stage (Recommender bundle)")
    p.add_argument("--index", default="flat", help="retrieval runs: index name in RUN/index (default flat, built "
                   "from the weights when missing)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=cmd_export)

    data = sub.add_parser("data", help="generate synthetic logs, build datasets, inspect them",
                          description="Data commands: generate, build, inspect.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = dsub.add_parser("generate", help="write synthetic logs with planted interests",
                        description="Writes synthetic logs in the UserBehavior CSV layout (gzip if OUT ends in .gz) "
                        "or the Amazon 2014 reviews + metadata layout (OUT is a directory).")
    p.add_argument("out", help="output file (userbehavior; .gz → gzip) or directory (amazon)")
    p.add_argument("--rows", type=int, default=1_000_000, help="events to write (default: 1000000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--items", type=int, default=50_000, help="catalogue size (default: 50000)")
    p.add_argument("--categories", type=int, default=500, help="number of categories (default: 500)")
    p.add_argument("--max-events", type=int, default=10_000, help="longest user history")
    p.add_argument("--mean-events", type=float, default=60.0, help="mean user length before clipping (default: 60)")
    p.add_argument("--layout", choices=["userbehavior", "amazon"], default="userbehavior",
                   help="raw format to imitate (default: userbehavior)")
    p.add_argument("--interest-coupling", type=float, default=None, metavar="SHARE",
                   help="pair mode (DESMIL's shift): the share of users whose interests come as coupled category "
                   "pairs, the others independent; 0 = every user independent, the unshifted control "
                   "(default: no pairs)")
    p.add_argument("--shift-split", metavar="PARQUET",
                   help="also write a users-protocol split whose test users all have independent interests "
                   "(protocol.user_split_file)")
    p.add_argument("--shift-test-share", type=float, default=0.1, help="share of users in the shifted test split")
    p.add_argument("--shift-valid-share", type=float, default=0.1,
                   help="share of users in the validation split (drawn from the training distribution)")
    p.set_defaults(func=cmd_data_generate)
    p = dsub.add_parser("build", help="raw logs → vocabularies, timelines, samples (from a data config)",
                        description="Builds a dataset from a data config (configs/data/*.yaml). An existing complete "
                        "build of the same config is reused; --overwrite replaces a different one.")
    p.add_argument("config", help="data build config YAML (configs/data/*.yaml)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing build of a different config")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_build)
    p = dsub.add_parser("embed-text", help="frozen item content vectors from item text (TF-IDF + SVD)",
                        description="Turns the text columns of the source's item table (e.g. MovieLens title and "
                        "genres) into frozen dense vectors stored in the built dataset's item side table: TF-IDF "
                        "+ truncated SVD (scikit-learn), L2-normalised; items without text get zero vectors. The "
                        "dataset must be built first (`recsys data build CONFIG`).")
    p.add_argument("config", help="the data config the dataset was built from")
    p.add_argument("--columns", nargs="+", required=True, help="item-table text columns to join (e.g. title genres)")
    p.add_argument("--name", default="text_vec", help="the dense item field to write (default: text_vec)")
    p.add_argument("--dim", type=int, default=64, help="vector width (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="SVD seed (default: 0)")
    p.set_defaults(func=cmd_data_embed_text)
    p = dsub.add_parser("inspect", help="print a built dataset's manifest (counts, vocab sizes, rejections)",
                        description="Prints the manifest of a built dataset as JSON: users, events, samples per "
                        "split, vocabulary sizes, build time and the rejection report.")
    p.add_argument("dataset", help="built dataset directory")
    p.set_defaults(func=cmd_data_inspect)
    return parser


def _user_errors() -> tuple:
    """The exception classes printed as one line: every ``RecsysError``, plus the kernels'
    input error when the kernels were imported (importing them here would pull in torch).
    File-not-found/-exists are user mistakes too; a ``KeyError`` or anything else is a bug
    and keeps its traceback."""
    from recsys.errors import RecsysError
    errors = [RecsysError, FileNotFoundError, FileExistsError]
    validation = sys.modules.get("recsys.kernels.validation")
    if validation is not None:
        errors.append(validation.KernelInputError)
    return tuple(errors)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)   # before any heavy import: `--help` answers at once
    if getattr(args, "quiet", False):
        import logging
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        args.func(args)
    except KeyboardInterrupt as exc:     # SIGINT, or SIGTERM during a build: clean-up has run
        print(f"error: interrupted{f' ({exc})' if str(exc) else ''}; nothing incomplete was left in place",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
