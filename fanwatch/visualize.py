"""visualize_data.py's work: 2-D maps of the window embeddings, to see whether the classes separate.

The embeddings are the ones training uses (the embedding cache: nothing is recomputed when the data
was already embedded with the same YAMNet weights, quantization and channel setting).

* **PCA** (``embeddings_pca_check.png``): a linear projection of *all* windows onto their two main
  directions of variance; a quick check, since it shows only the largest variations.
* **t-SNE** (``embeddings_tsne.png``): a non-linear map that keeps neighbourhoods. Its cost grows
  faster than linearly, so above ``tsne_max`` windows it runs on a subsample, stratified by label
  (proportional, with at least ``MIN_PER_LABEL`` windows of every label that has them) and seeded.
  The embeddings are first reduced to 50 dimensions by PCA, as usual for t-SNE.
* **Silhouette score** by label, with **cosine** distance in the 1024-d embedding space (the
  Euclidean one is reported beside it), on the same subsample: near 1 the labels form tight separate
  clusters, near 0 they overlap, below 0 windows sit closer to another label than to their own.

Colour = label, marker = normal (circle) or anomalous (cross). With several machine ids, one panel
shows all of them and one panel per machine follows (the other machines' windows in light grey).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, datasets, embeddings
from .errors import FanwatchError
from .export import DEFAULT_QUANTIZATION

VISUALIZE_FORMAT = "fanwatch-visualize/1"
JSON_NAME = "visualize.json"
PCA_NAME = "embeddings_pca_check.png"
TSNE_NAME = "embeddings_tsne.png"
DEFAULT_TSNE_MAX = 3000
MIN_TSNE_MAX = 10
MIN_PER_LABEL = 20  # windows of every label kept in the t-SNE subsample (when it has that many)
MAX_MACHINE_PANELS = 11  # plus the "all machines" panel
TSNE_PCA_DIMS = 50
SILHOUETTE_METRIC = "cosine"
# Below this many windows t-SNE runs on one OpenMP thread: measured on the 2-core box while other jobs
# ran, two threads took 22 s for 120 windows and 48 s for 1000, one thread 1.5 s and 15 s.
TSNE_ONE_THREAD_BELOW = 1500


@dataclass
class VisualizeSettings:
    data: Path = Path("data")
    out: Path = Path("artifacts") / "visualize"
    layout: str = "auto"
    tsne_max: int = DEFAULT_TSNE_MAX
    seed: int = 0
    quantization: str = DEFAULT_QUANTIZATION
    yamnet: str | None = None
    cache: str | None = None
    channel: str | int = "mean"
    workers: int | None = None
    progress: bool = True

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def log(message: str) -> None:
    print(message, flush=True)


def stratified_subsample(labels: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ~``cap`` items, stratified by label, seeded.

    Every label keeps min(its count, MIN_PER_LABEL, cap // n_labels) items (at least 1), the rest of
    the budget is shared in proportion to the labels' counts (largest remainders first). All indices
    when there are no more than ``cap`` items.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    names, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    base = np.minimum(counts, max(1, min(MIN_PER_LABEL, cap // len(names))))
    rest = cap - int(base.sum())
    quota = base.copy()
    if rest > 0:
        room = counts - base
        want = rest * room / max(room.sum(), 1)
        add = np.minimum(np.floor(want).astype(int), room)
        for k in np.argsort(-(want - add), kind="stable")[: rest - int(add.sum())]:
            if add[k] < room[k]:
                add[k] += 1
        quota = base + add
    picked = [rng.choice(np.flatnonzero(inverse == k), int(q), replace=False) for k, q in enumerate(quota)]
    return np.sort(np.concatenate(picked))


def silhouette(x: np.ndarray, labels: np.ndarray, metric: str) -> float | None:
    """Silhouette score by label, None when it is not defined (fewer than 2 labels, or every window
    its own label)."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return None
    return float(silhouette_score(x, labels, metric=metric))


def _palette(labels: list[str]) -> dict[str, tuple]:
    import seaborn as sns

    name = "tab10" if len(labels) <= 10 else "tab20" if len(labels) <= 20 else "husl"
    return dict(zip(labels, sns.color_palette(name, len(labels))))


def plot_map(
    xy: np.ndarray,
    labels: np.ndarray,
    normal: np.ndarray,
    machines: np.ndarray,
    path: Path,
    title: str,
    axis_names: tuple[str, str],
) -> tuple[Path, list[str]]:
    """Scatter coloured by label, marker by normal/anomalous; panels per machine when there are several.

    Returns the path and the machines that got their own panel."""
    from .evaluation import pyplot

    plt = pyplot()
    names = sorted(set(labels.tolist()))
    colours = _palette(names)
    label_normal = {n: bool(normal[labels == n].all()) for n in names}
    machine_names = sorted(set(machines.tolist()), key=lambda m: (-int((machines == m).sum()), m))
    panels = [None] + (sorted(machine_names[:MAX_MACHINE_PANELS]) if len(machine_names) > 1 else [])
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(5.2 * ncols + 2.4, 4.6 * nrows), squeeze=False, layout="constrained"
    )
    size = 20 if len(xy) <= 2000 else 8
    for ax, machine in zip(axes.flat, panels):
        sel = np.ones(len(xy), bool) if machine is None else machines == machine
        if machine is not None:
            ax.scatter(xy[~sel, 0], xy[~sel, 1], s=size * 0.6, color="0.85", marker="o", linewidths=0, rasterized=True)
        for name in names:
            for is_normal, marker in ((True, "o"), (False, "X")):
                m = sel & (labels == name) & (normal == is_normal)
                if m.any():
                    ax.scatter(
                        xy[m, 0],
                        xy[m, 1],
                        s=size,
                        color=colours[name],
                        marker=marker,
                        alpha=0.7,
                        linewidths=0,
                        rasterized=True,
                    )
        ax.set_title(
            "all machines" if machine is None else f"machine {machine} ({int(sel.sum())} windows)", fontsize=10
        )
        ax.set_xlabel(axis_names[0], fontsize=9)
        ax.set_ylabel(axis_names[1], fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker="o" if label_normal[n] else "X",
            color=colours[n],
            markersize=7,
            label=f"{n} ({int((labels == n).sum())})",
        )
        for n in names
    ]
    handles += [
        Line2D([], [], ls="", marker="o", color="0.3", label="marker o: normal"),
        Line2D([], [], ls="", marker="X", color="0.3", label="marker X: anomalous"),
    ]
    fig.legend(
        handles=handles,
        loc="outside right center",
        fontsize=8,
        title="label (windows)",
        title_fontsize=9,
        frameon=False,
    )
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, [m for m in panels if m is not None]


def visualize(s: VisualizeSettings) -> dict:
    """Embed (or read from the cache), project, plot and measure; returns what visualize.json holds."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    started = time.time()
    if int(s.tsne_max) < MIN_TSNE_MAX:
        raise FanwatchError(f"--tsne-max must be at least {MIN_TSNE_MAX} windows, not {s.tsne_max}")
    data = Path(s.data).expanduser()
    recs, layout = datasets.scan_dataset(data, s.layout)
    out = Path(s.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    extractor, yamnet_sha = embeddings.make_extractor(s.yamnet, s.quantization, s.cache, s.channel, s.workers)
    cached = sum(1 for r in recs if extractor.cached(r.path) is not None)
    log(f"data: {len(recs)} files in {data} ({layout} layout); {cached} already in the embedding cache")
    es = extractor.embed_recordings(recs, progress=s.progress, desc="embeddings")
    embeddings.require_windows(es, "the plots")
    x = es.embeddings
    labels, machines, normal = es.labels(), es.machines(), es.normal()
    notes: list[str] = []

    # --- PCA on every window ----------------------------------------------------------------------
    pca = PCA(n_components=2, random_state=s.seed).fit(x)
    xy_pca = pca.transform(x)
    ev = pca.explained_variance_ratio_
    _, panels = plot_map(
        xy_pca,
        labels,
        normal,
        machines,
        out / PCA_NAME,
        f"PCA of {len(x)} window embeddings ({len(es.recordings)} files, {data.name or data})",
        (f"PC 1 ({100 * ev[0]:.1f}% of variance)", f"PC 2 ({100 * ev[1]:.1f}%)"),
    )
    n_machines = len(set(machines.tolist()))
    if n_machines > len(panels) and n_machines > 1:
        notes.append(f"{n_machines} machines: panels for the {len(panels)} with the most windows only")

    # --- subsample, t-SNE, silhouette -------------------------------------------------------------
    sub = stratified_subsample(labels, int(s.tsne_max), s.seed)
    subsampled = len(sub) < len(x)
    if subsampled:
        log(
            f"t-SNE and silhouette: {len(sub)} of {len(x)} windows, subsampled stratified by label "
            f"(--tsne-max {s.tsne_max}, seed {s.seed})"
        )
    xs, ls = x[sub], labels[sub]
    tsne_info: dict = {
        "windows": int(len(sub)),
        "subsampled": subsampled,
        "cap": int(s.tsne_max),
        "stratified_by": "label",
        "seed": s.seed,
    }
    if len(sub) >= 4:
        perplexity = float(min(30.0, max(1.0, (len(sub) - 1) / 3.0)))
        t0 = time.time()
        log(f"t-SNE on {len(sub)} windows (perplexity {perplexity:.0f})...")
        reduced = xs
        if xs.shape[1] > TSNE_PCA_DIMS and len(xs) > TSNE_PCA_DIMS:
            reduced = PCA(n_components=TSNE_PCA_DIMS, random_state=s.seed).fit_transform(xs)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=s.seed)
        if len(sub) < TSNE_ONE_THREAD_BELOW:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1, user_api="openmp"):
                xy_tsne = tsne.fit_transform(reduced)
        else:
            xy_tsne = tsne.fit_transform(reduced)
        tsne_info.update(
            {"perplexity": perplexity, "pca_dims_first": int(reduced.shape[1]), "seconds": round(time.time() - t0, 1)}
        )
        log(f"t-SNE done in {time.time() - t0:.0f} s")
        title = f"t-SNE of {len(sub)} window embeddings" + (
            f" (stratified subsample of {len(x)})" if subsampled else f" ({len(es.recordings)} files)"
        )
        plot_map(xy_tsne, ls, normal[sub], machines[sub], out / TSNE_NAME, title, ("t-SNE 1", "t-SNE 2"))
    else:
        notes.append(f"only {len(sub)} windows: too few for t-SNE, {TSNE_NAME} not written")

    sil = {
        "by": "label",
        "space": f"{x.shape[1]}-d window embeddings",
        "metric": SILHOUETTE_METRIC,
        "windows": int(len(sub)),
        "value": silhouette(xs, ls, SILHOUETTE_METRIC),
        "euclidean": silhouette(xs, ls, "euclidean"),
    }
    if sil["value"] is None:
        notes.append("fewer than 2 labels (or one window per label): silhouette score not defined")
    if n_machines > 1:
        per = {}
        for m in sorted(set(machines.tolist())):
            sel = machines[sub] == m
            per[m] = silhouette(xs[sel], ls[sel], SILHOUETTE_METRIC) if sel.sum() > 2 else None
        sil["per_machine"] = per

    counts = {
        "files": len(es.recordings),
        "windows": int(len(x)),
        "skipped_files": len(es.skipped),
        "windows_per_label": {n: int((labels == n).sum()) for n in sorted(set(labels.tolist()))},
        "windows_per_machine": {m: int((machines == m).sum()) for m in sorted(set(machines.tolist()))},
        "normal_windows": int(normal.sum()),
        "anomalous_windows": int((~normal).sum()),
        "tsne_windows_per_label": {n: int((ls == n).sum()) for n in sorted(set(ls.tolist()))},
    }
    outputs = [PCA_NAME] + ([TSNE_NAME] if (out / TSNE_NAME).is_file() and len(sub) >= 4 else []) + [JSON_NAME]
    result = {
        "format": VISUALIZE_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {**s.as_dict(), "layout_used": layout, "fanwatch": __version__},
        "data": {"root": str(data.resolve()), "layout": layout, "summary": datasets.summarize(es.recordings)},
        "yamnet_sha256": yamnet_sha,
        "counts": counts,
        "subsample": {
            "windows": int(len(sub)),
            "of": int(len(x)),
            "cap": int(s.tsne_max),
            "stratified_by": "label",
            "seed": s.seed,
            "used_for": ["t-SNE", "silhouette"],
        },
        "pca": {"explained_variance_ratio": [float(v) for v in ev], "windows": int(len(x))},
        "tsne": tsne_info,
        "silhouette": sil,
        "machine_panels": panels,
        "skipped": [{"file": f, "reason": r} for f, r in es.skipped],
        "notes": notes,
        "outputs": outputs,
        "seconds": round(time.time() - started, 1),
    }
    datasets.write_json(out / JSON_NAME, result)

    value = sil["value"]
    log(
        f"silhouette by label ({SILHOUETTE_METRIC} distance in the {x.shape[1]}-d embedding space, "
        f"{len(sub)} windows): "
        + ("not defined" if value is None else f"{value:.3f} (euclidean {sil['euclidean']:.3f})")
    )
    for note in notes:
        log(f"note: {note}")
    if es.skipped:
        log(f"skipped {len(es.skipped)} file(s):")
        for f, r in es.skipped:
            log(f"  {f}: {r}")
    log(f"wrote {', '.join(str(out / o) for o in outputs)} in {result['seconds']:.0f} s")
    return result
