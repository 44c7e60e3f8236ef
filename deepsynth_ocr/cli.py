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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deepsynth-ocr", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune with a YAML run config; writes a run directory")
    p.add_argument("--config", "-c", help="YAML run config (e.g. configs/smoke.yaml)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field, e.g. -s train.max_steps=20 (repeatable)")
    p.set_defaults(func=cmd_train)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"deepsynth-ocr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
