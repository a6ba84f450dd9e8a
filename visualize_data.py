#!/usr/bin/env python3
"""2-D maps (PCA, t-SNE) of the window embeddings of a dataset, and how well its labels separate."""

from __future__ import annotations

import argparse
from pathlib import Path

from fanwatch import cli, datasets


def parse_args(argv=None) -> argparse.Namespace:
    from fanwatch import export, visualize

    p = argparse.ArgumentParser(
        description="Plot the YAMNet window embeddings of a dataset in 2-D (PCA of all windows, t-SNE of a "
        "stratified subsample), coloured by label, and print the silhouette score by label. "
        "Uses the embedding cache that train.py fills."
    )
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data"),
        help="recordings folder (folder per class, MIMII or DCASE layout); default data/",
    )
    p.add_argument(
        "--out", type=Path, default=Path("artifacts") / "visualize", help="output folder (default artifacts/visualize)"
    )
    p.add_argument(
        "--layout", default="auto", choices=["auto", *datasets.LAYOUTS], help="dataset layout (default: detected)"
    )
    p.add_argument(
        "--tsne-max",
        type=int,
        default=visualize.DEFAULT_TSNE_MAX,
        metavar="N",
        help=f"at most about N windows for t-SNE and the silhouette score, subsampled stratified by "
        f"label (default {visualize.DEFAULT_TSNE_MAX})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the subsample, PCA and t-SNE (default 0)")
    p.add_argument(
        "--quantization",
        default=export.DEFAULT_QUANTIZATION,
        choices=export.QUANTIZATIONS,
        help="front end whose embeddings are shown (default: the training default, so the cache is reused)",
    )
    cli.add_common(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    cli.quiet_tensorflow()
    args = parse_args(argv)
    with cli.user_errors():
        from fanwatch import visualize

        visualize.visualize(
            visualize.VisualizeSettings(
                data=args.data,
                out=args.out,
                layout=args.layout,
                tsne_max=args.tsne_max,
                seed=args.seed,
                quantization=args.quantization,
                yamnet=args.yamnet,
                cache=args.cache,
                channel=args.channel,
                workers=args.workers,
                progress=not args.no_progress,
            )
        )


if __name__ == "__main__":
    main()
