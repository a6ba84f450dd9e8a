#!/usr/bin/env python3
"""Train fanwatch on recordings in data/ and export one end-to-end TFLite model to artifacts/."""

from __future__ import annotations

import argparse
from pathlib import Path

from fanwatch import anomaly, cli, datasets, export, scorer
from fanwatch.training import TrainSettings

D = TrainSettings(data=Path("data"), out=Path("artifacts"))  # every default lives in TrainSettings

DEMO_DATA = Path("data/demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train the state classifier and the anomaly score on recordings, export "
        "artifacts/sound_classifier.tflite (waveform in; class probabilities, anomaly score out)."
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="recordings folder (folder per class, MIMII or DCASE 2020 layout); default data/, "
        "or data/demo with --demo",
    )
    p.add_argument("--out", type=Path, default=D.out, help=f"output folder (default {D.out}/)")
    p.add_argument(
        "--demo", action="store_true", help="generate the synthetic fan dataset (if not there yet) and train on it"
    )
    p.add_argument(
        "--seed", type=int, default=D.seed, help=f"seed for split, head training and demo data (default {D.seed})"
    )
    p.add_argument(
        "--layout", default=D.layout, choices=["auto", *datasets.LAYOUTS], help="dataset layout (default: detected)"
    )
    p.add_argument(
        "--normal-classes",
        default=D.normal_classes,
        metavar="A,B",
        help="folders layout: the classes that are normal states (all others anomalous)",
    )
    p.add_argument(
        "--anomalous-classes",
        default=D.anomalous_classes,
        metavar="A,B",
        help="folders layout: the classes that are anomalous (all others normal); default: a class "
        "is anomalous if a word of its name starts with fault, anomal, abnormal, broken, "
        "defect, damage or fail (e.g. fault_bearing; not no_fault)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=D.val_fraction, help=f"share of files for validation ({D.val_fraction:g})"
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=D.test_fraction,
        help=f"share of files held out for evaluate_model.py ({D.test_fraction:g}; DCASE uses its own test folder)",
    )
    p.add_argument(
        "--quantization",
        default=D.quantization,
        choices=export.QUANTIZATIONS,
        help="deployed model: int8 pointwise/dense weights (default) or float32; "
        "the float32 variant is always written too",
    )
    p.add_argument(
        "--anomaly-method",
        default=D.anomaly_method,
        choices=anomaly.METHODS,
        help="embedding distance: mean cosine distance to the 5 nearest normal embeddings "
        "(knn, default) or Mahalanobis with Ledoit-Wolf shrinkage",
    )
    p.add_argument(
        "--score",
        default=D.score_components,
        metavar="C:W,...",
        help="components of the deployed anomaly score and their weights, from "
        f"{', '.join(scorer.COMPONENTS)} (default {D.score_components}; see fanwatch/scorer.py)",
    )
    p.add_argument(
        "--score-channels",
        default=D.score_channels,
        metavar="C,...",
        help="components scored on their own beside the fused score, each with its own threshold and alert "
        f"evidence ('none': none; default {D.score_channels}; see fanwatch/scorer.py)",
    )
    p.add_argument(
        "--horizon",
        type=int,
        default=D.score_horizon,
        help=f"windows the anomaly score takes its median over (default {D.score_horizon}, 4.5 s)",
    )
    p.add_argument(
        "--false-alarm-rate",
        type=float,
        default=D.false_alarm_rate,
        help="target false alarms per window on normal validation data, sets the "
        f"thresholds (default {D.false_alarm_rate:g})",
    )
    p.add_argument(
        "--min-alert-level",
        type=float,
        default=D.min_alert_level,
        help="the anomaly score's and its channels' alert levels are never below this much evidence "
        f"(default {D.min_alert_level:g}: 5.5 s of windows well above normal; 0: the per-day bound alone)",
    )
    p.add_argument(
        "--false-alerts-per-day",
        type=float,
        default=D.false_alerts_per_day,
        help="target false alerts per day of the live alert rules: their evidence thresholds are set "
        "by replaying the normal validation recordings through them and extrapolating the tail "
        f"(default {D.false_alerts_per_day:g})",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=D.epochs,
        help=f"maximum head training epochs (early stopping; default {D.epochs})",
    )
    p.add_argument(
        "--patience", type=int, default=D.patience, help=f"early-stopping patience in epochs (default {D.patience})"
    )
    p.add_argument(
        "--hidden",
        type=int,
        default=D.hidden,
        help=f"units of a hidden layer in the head (default {D.hidden}: a linear softmax head)",
    )
    p.add_argument(
        "--augment",
        type=int,
        default=D.augment,
        metavar="N",
        help=f"augmented copies of each training recording for the head: another gain, colouring, background "
        f"noise, a hum (default {D.augment}; 0 = none; see fanwatch/augment.py). The anomaly score never sees them",
    )
    cli.add_common(p)
    p.set_defaults(channel=D.channel)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cli.quiet_tensorflow()
    with cli.user_errors():
        from fanwatch import training

        data = args.data or (DEMO_DATA if args.demo else Path("data"))
        if args.demo:
            from fanwatch import synth

            if not (data / "SYNTHETIC.json").is_file():
                print(f"demo: writing the synthetic fan dataset to {data}")
                synth.generate_dataset(data, layout="folders", seed=args.seed, progress=not args.no_progress)
        settings = training.TrainSettings(
            data=data,
            out=args.out,
            yamnet=args.yamnet,
            cache=args.cache,
            seed=args.seed,
            layout=args.layout,
            normal_classes=args.normal_classes,
            anomalous_classes=args.anomalous_classes,
            channel=args.channel,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            quantization=args.quantization,
            anomaly_method=args.anomaly_method,
            false_alarm_rate=args.false_alarm_rate,
            score_components=args.score,
            score_channels=args.score_channels,
            score_horizon=args.horizon,
            false_alerts_per_day=args.false_alerts_per_day,
            min_alert_level=args.min_alert_level,
            epochs=args.epochs,
            patience=args.patience,
            hidden=args.hidden,
            augment=args.augment,
            workers=args.workers,
            progress=not args.no_progress,
        )
        training.train(settings)


if __name__ == "__main__":
    main()
