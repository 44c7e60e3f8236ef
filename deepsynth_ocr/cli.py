"""``deepsynth-ocr``: command-line entry points over the package functions."""

from __future__ import annotations

import argparse
import sys

import yaml

from deepsynth_ocr.config import ConfigError, RunConfig


def _parse_value(text: str):
    """``-s train.max_steps=10``: the value is read as YAML (numbers, booleans, strings)."""
    return yaml.safe_load(text)


def build_config(config_path: str | None, overrides: list[str]) -> RunConfig:
    cfg = RunConfig.from_yaml(config_path) if config_path else RunConfig()
    data = cfg.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        *path, leaf = key.split(".")
        node = data
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{key}: unknown config section {part!r}")
            node = node[part]
        node[leaf] = _parse_value(value)
    return RunConfig.from_dict(data)


def cmd_train(args) -> int:
    from deepsynth_ocr.train import run

    result = run(build_config(args.config, args.set))
    if result.before and result.after:
        print(f"CER before {result.before.get('cer', float('nan')):.4f} -> after {result.after.get('cer', float('nan')):.4f}")
    print(f"run directory: {result.run_dir}")
    return 0


def cmd_prepare(args) -> int:
    import logging

    from deepsynth_ocr.data.prepare import prepare

    cfg = build_config(args.config, args.set)
    cfg.prepare.sources = args.sources or cfg.prepare.sources
    cfg.prepare.output_dir = args.out or cfg.prepare.output_dir
    cfg.data.source_type = args.type or cfg.data.source_type
    cfg.data.strict = args.strict or cfg.data.strict
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    result = prepare(cfg)  # validates the config again, with the flags applied
    print(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepsynth-ocr", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune with a YAML run config; writes a run directory")
    p.add_argument("--config", "-c", help="YAML run config (e.g. configs/smoke.yaml)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. -s train.max_steps=20 (repeatable)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("prepare", help="validate, normalise and split data sources into a saved dataset + report")
    p.add_argument("sources", nargs="*", help="paths, globs of shards or hub names (else prepare.sources from the config)")
    p.add_argument("--config", "-c", help="YAML run config (its data and prepare sections apply)")
    p.add_argument("--out", "-o", help="output directory (prepare.output_dir; default data/prepared/<name>)")
    p.add_argument("--type", help="source type instead of inferring it: jsonl, csv, parquet, folder, webdataset, hf_disk, hub")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of reporting it")
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. -s prepare.test_size=200 (repeatable)")
    p.set_defaults(func=cmd_prepare)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"deepsynth-ocr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
