#!/usr/bin/env python3
"""Evaluate the exported TFLite model (what the Pi runs) on held-out recordings; write metrics and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from fanwatch import cli, datasets, runtime


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run the deployed sound_classifier.tflite on every window of the test recordings that "
        "training set aside (or of another folder) and measure classification accuracy / F1 and "
        "anomaly AUC / pAUC; writes metrics.json, reports and plots."
    )
    p.add_argument(
        "--model",
        type=Path,
        default=Path("artifacts") / runtime.MODEL_NAME,
        help=f"the TFLite model, with model_card.json and split.json beside it "
        f"(default artifacts/{runtime.MODEL_NAME})",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="evaluate every recording of this folder (folder per class, MIMII or DCASE layout, "
        "e.g. a DCASE test/ folder's parent) instead of the model's test split",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default <model folder>/evaluation)")
    p.add_argument(
        "--layout", default="auto", choices=["auto", *datasets.LAYOUTS], help="layout of --data (default: detected)"
    )
    p.add_argument(
        "--machine",
        default=None,
        metavar="ID",
        help="score every recording as this machine id of the model (default: the recording's own "
        "machine id, else the closest known machine)",
    )
    p.add_argument(
        "--no-parity", action="store_true", help="skip the check of the TFLite outputs against the Keras head"
    )
    p.add_argument(
        "--no-alerts",
        action="store_true",
        help="skip the alert-level evaluation (the recordings replayed as streams through the live loop)",
    )
    p.add_argument(
        "--no-site",
        action="store_true",
        help="ignore the site calibration beside the model (applied by default when there is one)",
    )
    cli.add_common(p)
    p.set_defaults(channel=None)  # None: the channel setting the model was trained with (model card)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cli.quiet_tensorflow()
    with cli.user_errors():
        from fanwatch import evaluation

        evaluation.evaluate(
            evaluation.EvalSettings(
                model=args.model,
                data=args.data,
                out=args.out,
                layout=args.layout,
                machine=args.machine,
                yamnet=args.yamnet,
                cache=args.cache,
                channel=args.channel,
                workers=args.workers,
                progress=not args.no_progress,
                parity=not args.no_parity,
                alerts=not args.no_alerts,
                site=not args.no_site,
            )
        )


if __name__ == "__main__":
    main()
