"""Finding recordings on disk, labelling them, and splitting them into train/val/test.

Three dataset layouts are understood (:data:`LAYOUTS`); :func:`detect_layout` tells them apart and
:func:`scan` turns a folder into a sorted list of :class:`Recording`:

``folders``
    ``<root>/<class>/**/<file>.wav`` -- one folder per class, files at any depth below it.
    label = class folder name, machine = ``"default"``. Whether a class is normal or anomalous comes from
    ``normal_classes`` / ``anomalous_classes`` or else from its name (:func:`is_anomalous_name`).
``mimii``
    ``[<snr>_<machine>/]<machine>/id_XX/{normal,abnormal}/<file>.wav`` (MIMII). The root may be the folder
    above the machines, an ``<snr>_<machine>`` folder (``6dB_fan``, ``-6_dB_pump``), a ``<machine>`` folder
    or an ``id_XX`` folder. label = ``<machine>_normal`` / ``<machine>_abnormal``, machine =
    ``<machine>/id_XX``, ``snr`` = ``"6dB"``-style string when an SNR folder names it.
``dcase``
    ``<machine>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav`` (DCASE 2020 Task 2). The root may hold
    several machine folders or be one (then its own name is the machine). label = ``<machine>_normal`` /
    ``<machine>_anomaly``, machine = ``<machine>/id_XX``, subset = ``"train"`` / ``"test"``.

Audio files are those ending in ``.wav``, ``.flac`` or ``.ogg`` (any case); anything else (README.md,
.json, .npz, ...) and every hidden file or folder (name starting with ".") is ignored. Scanning only
looks at names; decoding and validation happen in :mod:`fanwatch.audio`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fanwatch.audio import AUDIO_EXTENSIONS, is_audio_file
from fanwatch.errors import FanwatchError

LAYOUTS = ("folders", "mimii", "dcase")
SPLITS = ("train", "val", "test")
SPLIT_FORMAT = "fanwatch-split"
SPLIT_VERSION = 1

LAYOUT_HELP = (
    "expected one of three layouts: folders (<root>/<class>/**/*.wav, one folder per class), "
    "MIMII ([<snr>_<machine>/]<machine>/id_XX/{normal,abnormal}/*.wav) or "
    "DCASE 2020 Task 2 (<machine>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav)"
)


@dataclass(frozen=True)
class Recording:
    """One audio file and what is known about it from its place in the dataset."""

    path: Path  # absolute
    label: str  # class the head learns
    machine: str  # machine/id group, e.g. "fan/id_00"; "default" when the layout has none
    normal: bool  # normal operating state vs anomalous
    subset: str | None = None  # "train"/"test" when the layout fixes it (DCASE), else None
    snr: str | None = None  # MIMII noise level ("6dB", "-6dB") when an SNR folder names it, else None


# --------------------------------------------------------------------------------------------------
# the default rule for anomalous class names

ANOMALY_STEMS = ("fault", "anomal", "abnormal", "broken", "defect", "damage", "fail")
NEGATION_WORDS = ("no", "non", "not", "without", "free")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)  # camelCase -> camel_Case
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_anomalous_name(name: str) -> bool:
    """Default rule for the folders layout: is a class with this folder name anomalous?

    The name is split into words at every character that is not a letter or digit and at camelCase
    boundaries, lower-cased. The class is anomalous iff some word *starts with* one of
    :data:`ANOMALY_STEMS` (fault, anomal, abnormal, broken, defect, damage, fail) and no word is one of
    :data:`NEGATION_WORDS` (no, non, not, without, free). So ``fault_bearing``, ``bearing_fault``,
    ``abnormal``, ``anomaly_x``, ``BrokenBlade``, ``faulty`` are anomalous; ``off``, ``on_state``,
    ``high_speed``, ``normal``, ``no_fault``, ``fault_free`` are normal. Pass ``normal_classes`` or
    ``anomalous_classes`` to :func:`scan` when the rule gets a name wrong.
    """
    words = _words(name)
    if any(w in NEGATION_WORDS for w in words):
        return False
    return any(w.startswith(ANOMALY_STEMS) for w in words)


# --------------------------------------------------------------------------------------------------
# walking the tree


def _audio_files(root: Path) -> list[tuple[str, ...]]:
    """Relative path parts of every non-hidden audio file below ``root``, sorted.

    Follows symlinked folders (data folders are often links) but visits each real folder once.
    """
    found: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for current, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(current).relative_to(root).parts
        for name in sorted(files):
            if is_audio_file(name):
                found.append(rel + (name,))
    found.sort()
    return found


def has_audio_files(root) -> bool:
    """True if some non-hidden audio file lies below ``root`` (symlinked folders followed); FanwatchError
    if ``root`` is not an existing folder."""
    return bool(_audio_files(_resolve_root(root)))


def _resolve_root(root) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FanwatchError(f"{path}: dataset folder not found")
    if not path.is_dir():
        raise FanwatchError(f"{path}: not a folder (give the dataset's top folder)")
    return path.resolve()


# --------------------------------------------------------------------------------------------------
# per-layout parsing of one file's relative path; None means "does not fit this layout"

_ID_RE = re.compile(r"^id_\d+$", re.IGNORECASE)
_SNR_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)_?db_(.+)$", re.IGNORECASE)
_EXT_RE = "|".join(re.escape(ext[1:]) for ext in AUDIO_EXTENSIONS)
_DCASE_FILE_RE = re.compile(rf"^(normal|anomaly)_(id_\d+)_(\d+)\.(?:{_EXT_RE})$", re.IGNORECASE)


def _snr_of(folder: str) -> str | None:
    match = _SNR_RE.match(folder)
    return f"{match.group(1)}dB" if match else None


def _parse_folders(root: Path, parts: tuple[str, ...]) -> dict | None:
    if len(parts) < 2:
        return None
    return {"label": parts[0], "machine": "default", "normal": None, "subset": None, "snr": None}


def _parse_mimii(root: Path, parts: tuple[str, ...]) -> dict | None:
    state = parts[-2].lower() if len(parts) >= 2 else ""
    if state not in ("normal", "abnormal"):
        return None
    snr = None
    if len(parts) == 2:  # root is the id_XX folder
        if not _ID_RE.match(root.name):
            return None
        machine, ident = root.parent.name, root.name
        snr = _snr_of(root.parent.parent.name)
    elif len(parts) == 3:  # root is the <machine> folder
        if not _ID_RE.match(parts[0]):
            return None
        machine, ident = root.name, parts[0]
        snr = _snr_of(root.parent.name)
    elif len(parts) == 4:  # root holds machine folders (maybe an <snr>_<machine> folder)
        if not _ID_RE.match(parts[1]):
            return None
        machine, ident = parts[0], parts[1]
        snr = _snr_of(root.name)
    elif len(parts) == 5:  # root holds <snr>_<machine> folders
        if not _ID_RE.match(parts[2]):
            return None
        snr = _snr_of(parts[0])
        if snr is None:
            return None
        machine, ident = parts[1], parts[2]
    else:
        return None
    if not machine:
        return None
    return {
        "label": f"{machine}_{state}",
        "machine": f"{machine}/{ident.lower()}",
        "normal": state == "normal",
        "subset": None,
        "snr": snr,
    }


def _parse_dcase(root: Path, parts: tuple[str, ...]) -> dict | None:
    match = _DCASE_FILE_RE.match(parts[-1])
    if match is None or len(parts) not in (1, 2, 3):
        return None
    if len(parts) == 1:  # root is a <machine>/train or <machine>/test folder itself
        subset, machine = root.name.lower(), root.parent.name
    else:
        subset = parts[-2].lower()
        machine = root.name if len(parts) == 2 else parts[0]
    if subset not in ("train", "test") or not machine:
        return None
    state, ident = match.group(1).lower(), match.group(2).lower()
    return {
        "label": f"{machine}_{state}",
        "machine": f"{machine}/{ident}",
        "normal": state == "normal",
        "subset": subset,
        "snr": None,
    }


_PARSERS = {"dcase": _parse_dcase, "mimii": _parse_mimii, "folders": _parse_folders}
_DETECT_ORDER = ("dcase", "mimii", "folders")  # most specific first: a MIMII tree also looks like folders


def _first_misfit(root: Path, files, layout: str) -> tuple[str, ...] | None:
    parser = _PARSERS[layout]
    for parts in files:
        if parser(root, parts) is None:
            return parts
    return None


def _detect(root: Path, files) -> str:
    if not files:
        raise FanwatchError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found; {LAYOUT_HELP}")
    misfit = None
    for layout in _DETECT_ORDER:
        misfit = _first_misfit(root, files, layout)
        if misfit is None:
            if layout == "folders":
                _refuse_machine_folders_as_classes(root, files)
            return layout
    raise FanwatchError(f"{root}: cannot tell the dataset layout ({'/'.join(misfit)} fits none); {LAYOUT_HELP}")


def _refuse_machine_folders_as_classes(root: Path, files) -> None:
    """A folder-per-class root whose class folders are DCASE or MIMII machine folders is a mistake: the
    machine's normal and anomalous clips would become one "class". Say so instead of training on it."""
    by_class: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for parts in files:
        by_class[parts[0]].append(parts[1:])
    for name, inner in sorted(by_class.items()):
        for layout, title in (("dcase", "DCASE 2020 Task 2"), ("mimii", "MIMII")):
            if all(_PARSERS[layout](root / name, parts) is not None for parts in inner):
                others = sorted(set(by_class) - {name})
                raise FanwatchError(
                    f"{root}: {name}/ is a {title} machine folder, but it sits beside "
                    f"{', '.join(o + '/' for o in others[:3])}{' ...' if len(others) > 3 else ''} which "
                    f"{'is' if len(others) == 1 else 'are'} not, so the folder-per-class reading would take "
                    f"each folder as one class; point --data at {root / name} (or at a folder holding only "
                    "machine folders), or pass --layout folders if every folder really is one class"
                )


def detect_layout(root) -> str:
    """Which of :data:`LAYOUTS` the folder uses: the most specific one (dcase, then mimii, then folders)
    that every audio file below ``root`` fits. FanwatchError when none fits or there is no audio."""
    root = _resolve_root(root)
    return _detect(root, _audio_files(root))


# --------------------------------------------------------------------------------------------------
# scanning


def _name_set(value, what: str) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = value.split(",")
    else:
        items = list(value)
    names = {str(item).strip() for item in items if str(item).strip()}
    if not names:
        raise FanwatchError(f"{what} is empty: name at least one class folder")
    return names


def _normal_flags(classes: list[str], normal_classes, anomalous_classes) -> dict[str, bool]:
    normal = _name_set(normal_classes, "normal_classes")
    anomalous = _name_set(anomalous_classes, "anomalous_classes")
    known = set(classes)
    for what, names in (("normal_classes", normal), ("anomalous_classes", anomalous)):
        unknown = sorted((names or set()) - known)
        if unknown:
            raise FanwatchError(
                f"{what} names class(es) that do not exist: {', '.join(unknown)} (classes found: {', '.join(classes)})"
            )
    if normal is not None and anomalous is not None:
        both = sorted(normal & anomalous)
        if both:
            raise FanwatchError(f"class(es) listed as both normal and anomalous: {', '.join(both)}")
        neither = sorted(known - normal - anomalous)
        if neither:
            raise FanwatchError(
                f"class(es) listed neither as normal nor as anomalous: {', '.join(neither)} "
                "(give only one of the two lists to mean 'all others')"
            )
        return {c: c in normal for c in classes}
    if normal is not None:
        return {c: c in normal for c in classes}
    if anomalous is not None:
        return {c: c not in anomalous for c in classes}
    return {c: not is_anomalous_name(c) for c in classes}


def scan(root, layout: str = "auto", normal_classes=None, anomalous_classes=None) -> list[Recording]:
    """All recordings below ``root``, sorted by path; see :func:`scan_dataset`."""
    return scan_dataset(root, layout, normal_classes, anomalous_classes)[0]


def scan_dataset(
    root, layout: str = "auto", normal_classes=None, anomalous_classes=None
) -> tuple[list[Recording], str]:
    """All recordings below ``root``, sorted by path (deterministic), and the layout they were read with.

    ``layout`` is ``"auto"`` (see :func:`detect_layout`) or one of :data:`LAYOUTS` to force it; a forced
    layout that some audio file does not fit is a FanwatchError naming that file. ``normal_classes`` /
    ``anomalous_classes`` (iterables of class folder names, or one comma-separated string) apply to the
    folders layout only: with ``normal_classes`` every other class is anomalous, with
    ``anomalous_classes`` every other class is normal, with both they must together name every class;
    without either, :func:`is_anomalous_name` decides. MIMII and DCASE take normal/anomalous from their
    folder and file names.
    """
    root = _resolve_root(root)
    files = _audio_files(root)
    if layout in (None, "auto"):
        layout = _detect(root, files)
    elif layout not in LAYOUTS:
        raise FanwatchError(f"unknown layout {layout!r}: use auto, {', '.join(LAYOUTS)}")
    else:
        if not files:
            raise FanwatchError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
        misfit = _first_misfit(root, files, layout)
        if misfit is not None:
            raise FanwatchError(f"{root}: {'/'.join(misfit)} does not fit the {layout} layout; {LAYOUT_HELP}")
    if layout != "folders" and (normal_classes is not None or anomalous_classes is not None):
        raise FanwatchError(
            f"normal/anomalous class lists apply to the folders layout only; this dataset is {layout}, "
            "whose folder and file names say what is normal"
        )

    parser = _PARSERS[layout]
    parsed = [(parts, parser(root, parts)) for parts in files]
    if layout == "folders":
        classes = sorted({info["label"] for _, info in parsed})
        flags = _normal_flags(classes, normal_classes, anomalous_classes)
        for _, info in parsed:
            info["normal"] = flags[info["label"]]
    recordings = [Recording(path=root.joinpath(*parts), **info) for parts, info in parsed]
    recordings.sort(key=lambda r: str(r.path))
    return recordings, layout


# --------------------------------------------------------------------------------------------------
# splitting


class Splits(dict):
    """``{"train": [...], "val": [...], "test": [...]}`` plus ``params`` (seed and fractions used)."""

    def __init__(self, *args, params: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.params = dict(params or {})


def _rng_for(seed: int, key: tuple) -> np.random.Generator:
    """A generator that depends only on the seed and the stratum (stable across runs and processes)."""
    text = json.dumps([int(seed), *[str(k) for k in key]])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _round(value: float) -> int:
    return int(np.floor(value + 0.5))


def _allocate(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts for one stratum of ``n`` groups; see :func:`split_recordings`."""
    if n <= 0:
        return 0, 0, 0
    if n == 1:
        return 1, 0, 0
    if n == 2:
        if val_fraction > 0:
            return 1, 1, 0
        if test_fraction > 0:
            return 1, 0, 1
        return 2, 0, 0
    n_val = _round(n * val_fraction)
    n_test = _round(n * test_fraction)
    if val_fraction > 0:
        n_val = max(1, n_val)
    if test_fraction > 0:
        n_test = max(1, n_test)
    while n - n_val - n_test < 1:  # keep at least one for training, taking from the larger share
        if n_val >= n_test and n_val > (1 if val_fraction > 0 else 0):
            n_val -= 1
        elif n_test > (1 if test_fraction > 0 else 0):
            n_test -= 1
        elif n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def _group_key(rec: Recording) -> tuple:
    # MIMII publishes each clip at several SNRs (the same machine sound mixed with different noise):
    # the copies of one clip must share a split, or the test set would hold training sounds.
    if rec.snr is not None:
        return ("clip", rec.machine, rec.label, rec.path.name)
    return ("file", str(rec.path))


def split_recordings(
    recs: Iterable[Recording], seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> Splits:
    """Split recordings by file into ``{"train", "val", "test"}`` lists, stratified by (label, machine).

    * Deterministic: the same recordings and seed give the same split whatever their input order; each
      stratum is shuffled by a generator seeded from ``seed`` and the stratum, so adding one stratum does
      not reshuffle the others.
    * Per stratum of ``n`` files: val gets ``round(n * val_fraction)`` and test ``round(n * test_fraction)``,
      each at least 1 when its fraction is > 0 and ``n >= 3``, train always at least 1. A stratum of 1 file
      goes to train; of 2 files to train + val (train + test if ``val_fraction`` is 0).
    * Recordings whose layout fixes the subset (DCASE): ``subset == "test"`` all go to test, ``"train"``
      ones are split into train/val only, val taking ``val_fraction`` of them (``test_fraction`` unused).
    * MIMII copies of one clip at several SNRs (same machine, label and file name) count as one item and
      land in the same split.
    """
    val_fraction = float(val_fraction)
    test_fraction = float(test_fraction)
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise FanwatchError(
            f"split fractions must be >= 0 and leave room for training (val {val_fraction}, test {test_fraction})"
        )
    by_path: dict[str, Recording] = {}
    for rec in recs:
        key = str(rec.path)
        if key in by_path and by_path[key] != rec:
            raise FanwatchError(f"{rec.path}: listed twice with different labels")
        by_path[key] = rec

    out = Splits(
        {name: [] for name in SPLITS},
        params={
            "seed": int(seed),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        },
    )
    strata: dict[tuple, dict[tuple, list[Recording]]] = defaultdict(lambda: defaultdict(list))
    for rec in by_path.values():
        if rec.subset == "test":
            out["test"].append(rec)
            continue
        fixed = "train" if rec.subset == "train" else ""
        strata[(fixed, rec.label, rec.machine)][_group_key(rec)].append(rec)

    for stratum in sorted(strata):
        groups = strata[stratum]
        keys = sorted(groups)
        order = _rng_for(seed, stratum).permutation(len(keys))
        fixed_train = stratum[0] == "train"
        n_train, n_val, n_test = _allocate(len(keys), val_fraction, 0.0 if fixed_train else test_fraction)
        for rank, index in enumerate(order):
            name = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            out[name].extend(groups[keys[index]])

    for name in SPLITS:
        out[name].sort(key=lambda r: str(r.path))
    return out


# --------------------------------------------------------------------------------------------------
# saving / loading


def save_split(path, splits, root, params: dict | None = None) -> Path:
    """Write ``splits`` as JSON to ``path`` (atomically) and return the path.

    File paths are stored relative to ``root`` (POSIX separators) when inside it, else absolute; each entry
    also has label, machine, normal, subset and snr. The seed and fractions come from ``splits.params``
    (as returned by :func:`split_recordings`) updated with ``params``.
    """
    path = Path(path).expanduser()
    root = Path(root).expanduser().resolve()
    meta = dict(getattr(splits, "params", {}) or {})
    meta.update(params or {})
    doc = {"format": SPLIT_FORMAT, "version": SPLIT_VERSION, "root": str(root), **meta, "splits": {}}
    for name, recs in splits.items():
        entries = []
        for rec in recs:
            file_path = Path(rec.path)
            try:
                stored = file_path.relative_to(root).as_posix()
            except ValueError:
                stored = str(file_path)
            entries.append(
                {
                    "path": stored,
                    "label": rec.label,
                    "machine": rec.machine,
                    "normal": bool(rec.normal),
                    "subset": rec.subset,
                    "snr": rec.snr,
                }
            )
        doc["splits"][name] = entries
    write_json(path, doc, indent=1)
    return path


def write_json(path, data, indent: int = 2) -> Path:
    """Write JSON atomically (temporary file, then rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_split(path, root=None, must_exist=SPLITS) -> Splits:
    """Read a split written by :func:`save_split`; Recordings get absolute paths.

    Relative paths are resolved against ``root`` when given (the dataset moved), else against the root
    stored in the file. FanwatchError when the file is missing or malformed, or a file listed in one of the
    ``must_exist`` splits has vanished (files of the other splits are returned as listed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FanwatchError(f"{path}: split file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FanwatchError(f"{path}: not a readable split file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT or not isinstance(doc.get("splits"), dict):
        raise FanwatchError(f"{path}: not a fanwatch split file")
    base = Path(root).expanduser().resolve() if root is not None else Path(doc.get("root", path.parent))
    params = {k: doc[k] for k in ("seed", "val_fraction", "test_fraction") if k in doc}
    out = Splits(params=params)
    missing: list[Path] = []
    try:
        for name, entries in doc["splits"].items():
            recs = []
            for entry in entries:
                stored = Path(entry["path"])
                file_path = stored if stored.is_absolute() else base / stored
                if name in must_exist and not file_path.is_file():
                    missing.append(file_path)
                recs.append(
                    Recording(
                        path=file_path,
                        label=str(entry["label"]),
                        machine=str(entry["machine"]),
                        normal=bool(entry["normal"]),
                        subset=entry.get("subset"),
                        snr=entry.get("snr"),
                    )
                )
            out[name] = recs
    except (KeyError, TypeError, AttributeError) as exc:
        raise FanwatchError(f"{path}: malformed split entry ({exc!r})") from None
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FanwatchError(f"{path}: listed file has vanished: {missing[0]}{more}")
    return out


# --------------------------------------------------------------------------------------------------
# summaries


def summarize(recs: Iterable[Recording]) -> dict:
    """Counts for reports: files, normal/anomalous, per label, per machine, per split-subset and per SNR.

    ``label_normal`` maps each label to whether it is a normal class. Dict keys are sorted.
    """
    recs = list(recs)
    labels = Counter(r.label for r in recs)
    machines = Counter(r.machine for r in recs)
    subsets = Counter(r.subset for r in recs if r.subset is not None)
    snrs = Counter(r.snr for r in recs if r.snr is not None)
    summary = {
        "files": len(recs),
        "normal": sum(1 for r in recs if r.normal),
        "anomalous": sum(1 for r in recs if not r.normal),
        "labels": dict(sorted(labels.items())),
        "machines": dict(sorted(machines.items())),
        "label_normal": dict(sorted({r.label: bool(r.normal) for r in recs}.items())),
    }
    if subsets:
        summary["subsets"] = dict(sorted(subsets.items()))
    if snrs:
        summary["snrs"] = dict(sorted(snrs.items()))
    return summary
