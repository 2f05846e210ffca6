"""Command line: ``python -m rift run --checkpoint ck.safetensors --arch resnet18 --dataset cifar10``.

Builds a RiftConfig from a JSON spec file and/or flags, runs the pipeline with progress bars, prints
the MRC and interpolation tables and writes the weights and ``result.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from rift import __version__
from rift.config import RiftConfig, dataset_names, unused_settings
from rift.errors import RiftError
from rift.repeats import repeated
from rift.setting_names import describe_errors as describe_setting_errors
from rift.setting_names import field_path, origin_key

#: The flags of ``run`` that set one setting each (flag → dotted setting).
SHORTCUT_FLAGS = {
    "--arch": "architecture.name", "--num-classes": "architecture.num_classes",
    "--dataset": "dataset.name", "--data-root": "dataset.root", "--data-path": "dataset.path",
    "--device": "device", "--seed": "seed", "--precision": "precision",
    "--checkpoint-entry": "checkpoint_entry",
}
#: The flags that give a library error's ``field`` when it names no setting but an argument of
#: the pipeline (``run_pipeline(output_dir=...)``).
_ARGUMENT_FLAGS = {"output_dir": "--out"}


def field_words(field: str) -> str:
    """A library error's ``field`` as the command line's user knows it: the flag that sets it
    beside the setting (``dataset.path, --data-path``), a flag alone for a pipeline argument
    (``--out``), else the setting (``--set`` or the ``--config`` file gives it)."""
    flags = {dotted: flag for flag, dotted in SHORTCUT_FLAGS.items()}
    if field in flags:
        return f"{field}, {flags[field]}"
    return _ARGUMENT_FLAGS.get(field, field)


class CliInputError(Exception):
    """A file or flag named on the command line cannot be used; the message is one line for the
    user."""


def _set_path(tree: dict[str, Any], dotted: str, value: Any, flag: str) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted`` "a.b.c", creating sections on the way. A
    section given as an object (``--set mrc='{"steps": 2}'``) is merged into the settings already
    there (from ``--config`` or an earlier ``--set``), not put in their place.

    Raises:
        CliInputError: a section on the way already holds a value, not settings (``--set mrc=5``
            then ``--set mrc.steps=3``); names ``flag`` and the section.
    """
    keys = dotted.split(".")
    for depth, key in enumerate(keys[:-1]):
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            section = ".".join(keys[:depth + 1])
            raise CliInputError(f"{flag}: cannot set {dotted!r} because {section!r} is already "
                                f"{json.dumps(tree)}, not a section of settings")
    if isinstance(value, dict) and isinstance(tree.get(keys[-1]), dict):
        # Replacing the section silently dropped what the config file or an earlier --set put
        # there (--set mrc.num_examples=64 --set mrc='{"steps": 2}' ran with 1024 examples).
        for key, inner in value.items():
            _set_path(tree[keys[-1]], key, inner, flag)
        return
    tree[keys[-1]] = value


def _parse_override(text: str) -> tuple[str, Any, str]:
    """``mrc.steps=5`` → ("mrc.steps", 5, "5"): the key, the value (JSON when it parses, else
    the text) and the text as typed."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not all(part.strip() for part in key.split(".")):
        # "=1", ".x=1", "a..b=1" would otherwise reach the config as keys named "".
        raise argparse.ArgumentTypeError(
            f"--set {text!r}: the key must be dotted setting names, e.g. mrc.steps=5")
    try:
        return key, json.loads(raw), raw
    except json.JSONDecodeError:
        return key, raw, raw


def _path_text(text: str) -> str:
    """A path flag's value, refused when empty or blank: ``--out "$OUT"`` with ``OUT`` unset
    wrote the run's outputs into the current folder (``Path("")`` is "."), and ``--checkpoint
    ""`` was "--checkpoint .: a folder"."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path ({text!r}); an unset shell variable?")
    return text


class _RepeatedKey(ValueError):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of a key given twice: {"lr": 0.1, "lr": 0.2} ran at 0.2.
    twice = repeated(key for key, _ in pairs)
    if twice:
        raise _RepeatedKey(f"the key {twice[0]!r} is given more than once in one object")
    return dict(pairs)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        tree = json.loads(path.read_text(), object_pairs_hook=_refuse_repeated_keys)
    except FileNotFoundError:
        raise CliInputError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise CliInputError(f"--config {path}: cannot read it ({exc.strerror})") from None
    except _RepeatedKey as exc:
        raise CliInputError(f"--config {path}: {exc}; give it once") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # YAML and TOML look like config files too; say plainly that only JSON is read.
        kind = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}.get(path.suffix.lower())
        also = f"; {kind} is not read, convert it to JSON" if kind else ""
        raise CliInputError(f"--config {path}: not valid JSON ({exc}){also}") from None
    if not isinstance(tree, dict):
        raise CliInputError(f"--config {path}: expected a JSON object, got "
                            f"{type(tree).__name__}")
    if isinstance(tree.get("config"), dict) and _RUN_RECORD_KEYS & set(tree):
        # A run's manifest.json or result.json (the service's or a run folder's): its 'config'
        # is the full config the run used, what a rerun is given (every other key of the
        # record was an "unknown setting", and architecture and dataset "required").
        return dict(tree["config"])
    if isinstance(tree.get("config"), dict) and set(tree) <= _JOB_REQUEST_KEYS:
        # A POST /v1/jobs body copied from the API's examples: every key was "unknown
        # setting", and architecture and dataset "required", which hid the one fix.
        raise CliInputError(f"--config {path}: a job request ({', '.join(sorted(tree))}), "
                            "not a RiftConfig: its 'config' object is the RiftConfig; save "
                            "that object alone and give it")
    return tree


#: Keys that make a JSON object with a ``config`` a run's record: ``manifest.json``'s
#: version, ``result.json``'s chosen α (``rift.manifest``, ``rift.pipeline.build_result``).
_RUN_RECORD_KEYS = frozenset({"manifest_version", "chosen_alpha"})

#: The keys of a ``POST /v1/jobs`` body (api/schemas.py JobCreate).
_JOB_REQUEST_KEYS = frozenset({"config", "checkpoint_id", "dataset_id", "labels",
                               "time_limit_seconds"})


class ConfigInputError(CliInputError):
    """The merged configuration is invalid; the message names each setting at fault and where it
    came from (a flag, a ``--set``, the ``--config`` file)."""


# What to give when a required section is missing.
_REQUIRED_HINTS = {"architecture": "--arch NAME", "dataset": "--dataset NAME"}


def describe_validation_error(exc: ValidationError, origins: dict[str, str]) -> str:
    """One line naming every invalid setting, what is wrong with it and where it was given
    (``origins``: dotted setting or section → the flag or file that set it; "" for the
    config file key of settings no flag set)."""
    return describe_errors(exc.errors(), origins)


def describe_errors(errors: list[ErrorDetails], origins: dict[str, str]) -> str:
    """:func:`describe_validation_error` of pydantic's ``errors`` (the wording is
    :func:`rift.setting_names.describe_errors`', shared with the library's dict configs)."""
    return describe_setting_errors(errors, RiftConfig, origins, _REQUIRED_HINTS)[0]


def build_config(args: argparse.Namespace) -> RiftConfig:
    """Merge the spec file, the shortcut flags and ``--set`` overrides, then validate.

    Raises:
        ConfigInputError: the result is not a valid RiftConfig (one line, see
            ``describe_validation_error``).
    """
    origins = {"": f"--config {args.config}"} if args.config else {}
    try:
        return _build_config(args, origins)
    except _ConfigErrors as exc:
        raise ConfigInputError(describe_errors(exc.errors, origins)) from None


class _ConfigErrors(Exception):
    """The merged configuration's errors: the lax parse's, and the strict parse's at settings
    of the ``--config`` file (``"0.01"``, ``2.0`` for an integer, ``"yes"``: refused there as
    the API refuses them in a job's config)."""

    def __init__(self, errors: list[ErrorDetails]) -> None:
        super().__init__(errors)
        self.errors = errors


def _file_errors_of_strict_parse(tree: dict[str, Any], origins: dict[str, str]
                                 ) -> list[ErrorDetails]:
    """The errors of ``tree`` parsed as the API parses a job's config (strict JSON: no text
    for numbers or booleans, no 2.0 for 2) at settings the ``--config`` file gave. Flags and
    ``--set`` values are text by nature and keep the lax parse."""
    if "" not in origins:
        return []
    try:
        RiftConfig.model_validate_json(json.dumps(tree), strict=True)
    except ValidationError as exc:
        return [error for error in exc.errors()
                if error["type"] != "missing"
                and not origin_key(field_path(error["loc"]), origins)]
    return []


def _build_config(args: argparse.Namespace, origins: dict[str, str]) -> RiftConfig:
    tree: dict[str, Any] = _read_config_file(Path(args.config)) if args.config else {}
    _refuse_dataset_path(args.dataset, args.data_path)
    for flag, dotted in SHORTCUT_FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            _set_path(tree, dotted, value, flag)
            origins[dotted] = flag
    for dotted, value, raw in args.set or []:
        _set_path(tree, dotted, value, f"--set {dotted}")
        origins[dotted] = f"--set {dotted}={raw}"
    for path, why in unused_settings(tree):
        dotted = ".".join(path)
        given = [key for key in origins if key and (dotted == key or dotted.startswith(key + "."))]
        origin = origins[max(given, key=len)] if given else origins.get("", "")
        raise ConfigInputError(f"invalid configuration: {dotted}: {why}"
                               + (f" (from {origin})" if origin else ""))
    try:
        config = _validate_lax(tree, args)
    except ValidationError as exc:
        # The lax parse's errors first; the strict parse adds the file's settings it accepted.
        reported = {field_path(error["loc"]) for error in exc.errors()}
        raise _ConfigErrors([*exc.errors(), *(
            error for error in _file_errors_of_strict_parse(tree, origins)
            if field_path(error["loc"]) not in reported)]) from None
    strict = _file_errors_of_strict_parse(tree, origins)
    if strict:
        raise _ConfigErrors(strict)
    return config


def _refuse_dataset_path(dataset: str | None, data_path: str | None) -> None:
    """``--dataset data.npz`` (a file or folder where a dataset's kind is asked for) is the
    first thing a user of their own data types; the choice list alone did not say that the
    path goes to ``--data-path``.

    Raises:
        ConfigInputError: naming ``--dataset`` and the two flags to give instead.
    """
    if dataset is None or dataset in dataset_names():
        return
    path = Path(dataset).expanduser()
    if path.suffix.lower() == ".npz" or path.is_file():
        kind = "npz"
    elif path.is_dir():
        kind = "imagefolder"
    else:
        return  # a mistyped name: the validation's "did you mean" says the rest
    fix = f"--dataset {kind} --data-path {dataset}"
    if data_path is not None and data_path != dataset:
        fix = f"--dataset {kind} (--data-path is already {data_path})"
    raise ConfigInputError(
        f"invalid configuration: dataset.name: --dataset takes a kind of dataset "
        f"({', '.join(dataset_names())}), not a path (got {dataset!r}); for your own data "
        f"give {fix}")


def _validate_lax(tree: dict[str, Any], args: argparse.Namespace) -> RiftConfig:
    try:
        return RiftConfig.model_validate(tree)
    except ValidationError as exc:
        # "--set finetune.module=4" parses as the number 4 (a module of an nn.Sequential is
        # named "4"): where a setting takes text, the text typed is what was meant. Not for a
        # list: "[4.10]" is no text meant as a list (its number is refused, asking for quotes).
        typed = {dotted: raw for dotted, value, raw in args.set or []
                 if not isinstance(value, str | list | dict)}
        wanted = {".".join(str(part) for part in error["loc"]) for error in exc.errors()
                  if error["type"] == "string_type"}
        if not wanted or not wanted <= typed.keys():
            raise
        for dotted in wanted:
            _set_path(tree, dotted, typed[dotted], f"--set {dotted}")
        return RiftConfig.model_validate(tree)


def _check_writable_folder(folder: Path, flag: str) -> None:
    """Make ``folder`` (with its parents) and write a scratch file in it, before any long work:
    a folder that cannot be made or written (a parent that is a file, no permission, a read-only
    disk) used to fail only at the first save, minutes of training later.

    Raises:
        CliInputError: naming ``flag``, the folder and the reason.
    """
    from rift.stage_outputs import output_folder_problem  # imports torch: not for --help

    problem = output_folder_problem(folder)
    if problem is not None:
        raise CliInputError(f"{flag} {folder}: {problem}")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what
    :func:`_check_writable_folder` will make."""
    missing: list[Path] = []
    for path in (folder, *folder.absolute().parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty, or holds only the lock file a
    run leaves (released: the run has ended); stop at the first that holds anything else."""
    from rift.stage_outputs import LOCK_FILE

    for folder in folders:
        try:
            if [entry.name for entry in folder.iterdir()] == [LOCK_FILE]:
                (folder / LOCK_FILE).unlink()
            folder.rmdir()
        except OSError:
            return


class _ProgressBars:
    """One tqdm bar per stage, driven by the pipeline's progress callback."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=1000, desc=stage, leave=True,
                                          bar_format="{desc:<12}{percentage:3.0f}%|{bar:20}| {postfix}")
        bar.n = int(fraction * 1000)
        bar.postfix = message  # plain text; set_postfix_str would prefix ", "
        bar.refresh()
        if fraction >= 1.0:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def print_warnings(kind: str, payload: dict[str, Any]) -> None:
    """The pipeline's ``warning`` events, one line each on stderr (also with ``--quiet``): the
    run goes on, but the user should know (a batch shrank after running out of memory, MRC fell
    back to full forward passes, no α > 0 kept the robustness, with what to try instead)."""
    if kind != "warning":
        return
    from tqdm import tqdm

    where = str(payload.get("stage", "run"))
    if payload.get("candidate") is not None:  # a sweep candidate's (rift.sweep)
        where += f", candidate {payload['candidate']}"
    # tqdm.write keeps an open progress bar intact below the line.
    tqdm.write(f"warning ({where}): {payload.get('message', '')}", file=sys.stderr)


def format_mrc_table(rows: list[dict[str, Any]], selected: str) -> str:
    """The MRC table for the terminal; a row stopped early by ``mrc.table = "selection"`` shows
    its lower bound as "≥ value" and its passes, with a note under the table."""
    lines = [f"{'module':<32}{'params':>10}{'MRC':>12}{'rob.acc@worst':>15}{'drop':>8}"]
    bounds = 0
    for row in rows:
        flag = "  <- fine-tuned" if row["name"] == selected else ""
        mrc = f"{row['mrc']:.4f}"
        if row.get("exact") is False:
            bounds += 1
            mrc = f"≥ {mrc}"
            flag += f"  (stopped after {row.get('passes')} passes)"
        lines.append(f"{row['name']:<32}{row['parameters']:>10}{mrc:>12}"
                     f"{row['robust_accuracy_at_worst']:>14.2f}%{row['robust_accuracy_drop']:>7.2f}"
                     f"{flag}")
    if bounds:
        lines.append(f"≥: {bounds} module(s) stopped early (mrc.table = selection): their MRC is "
                     "at least this, enough to rule them out; the chosen rows are exact")
    return "\n".join(lines)


def format_interpolation_table(points: list[dict[str, float | None]], chosen: float,
                               split: str = "test") -> str:
    # α as on the grid ("g"): with a fixed two decimals, alpha_step 0.005 printed 0.005 as 0.01
    # and 0.01 again, and the chosen row could not be told from its neighbour.
    # The split named: with α chosen on the validation split the α = 0 row is not the before
    # line's θ_AT (the test split's), and nothing said so.
    lines = [f"{'alpha':>7}{'clean':>9}{'robust':>10}  (%, {split} split)"]
    unmeasured = bounded = False
    for point in points:
        flag = "  <- chosen" if point["alpha"] == chosen else ""
        robust, bound = point["robust_accuracy"], point.get("robust_accuracy_at_most")
        # None: not attacked in full (interpolation.curve "selection"); a point whose attack
        # stopped early has an upper bound, shown as one (as the report page and riftctl do;
        # it read "-", the mark of a point never attacked).
        if robust is not None:
            shown = f"{robust:>9.2f}%"
        elif bound is not None:
            bounded = True
            shown = f"{'≤ ' + format(bound, '.2f'):>9}%"
        else:
            unmeasured = True
            shown = f"{'-':>10}"
        lines.append(f"{point['alpha']:>7g}{point['clean_accuracy']:>8.2f}%{shown}{flag}")
    notes = (["-: not attacked (only the points that could be chosen are; interpolation.curve "
              "'full' measures every α)"] if unmeasured else []) + (
        ["≤ x: attack stopped once the point could no longer be chosen, x an upper bound"]
        if bounded else [])
    return "\n".join(lines + notes)


def format_sweep_table(sweep: dict[str, Any]) -> str:
    """A sweep's candidates (``result.json["sweep"]``): each one's own α and accuracies there,
    the one the rule picked across all flagged, an excluded one with its reason. Before, the CLI
    printed the winner's curve alone and said nothing of the others."""
    lines = [f"{'#':>3}  {'module':<32}{'lr':>10}{'alpha':>7}{'clean':>9}{'robust':>9}"]
    for index, candidate in enumerate(sweep["candidates"]):
        head = f"{index:>3}  {candidate['module']:<32}{candidate['lr']:>10g}"
        if candidate.get("excluded"):
            lines.append(f"{head}  excluded: {candidate.get('reason', '')}")
            continue
        flag = "  <- chosen" if index == sweep["chosen"] else ""
        lines.append(f"{head}{candidate['chosen_alpha']:>7g}{candidate['clean_accuracy']:>8.2f}%"
                     f"{candidate['robust_accuracy']:>8.2f}%{flag}")
    return "\n".join(lines)


def _command_run(args: argparse.Namespace) -> int:
    from rift.pipeline import PipelineCallbacks, run_pipeline

    config = build_config(args)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise CliInputError(f"--checkpoint {checkpoint}: "
                            f"{'a folder, not a file' if checkpoint.is_dir() else 'no such file'}")
    out = Path(args.out)
    made = _missing_folders(out)
    _check_writable_folder(out, "--out")
    bars = _ProgressBars(enabled=not args.quiet)
    try:
        result = run_pipeline(config, checkpoint, Path(args.out),
                              PipelineCallbacks(on_progress=bars, on_event=print_warnings),
                              fresh=args.fresh)
    except BaseException:
        # A run refused before its first stage (a device CUDA lacks, a dataset file missing, a
        # checkpoint of another architecture) left the --out folder it had made, empty: a
        # folder that looks like a run's outputs and holds none. A stage saved is kept.
        _remove_empty(made)
        raise
    finally:
        bars.close()
    print("\nModule robust criticality (lowest = least critical):")
    print(format_mrc_table(result["mrc"]["rows"], result["selected_module"]))
    sweep = result.get("sweep")
    if sweep is not None:
        print("\nSweep candidates (each at its own curve's α; the rule picks across all):")
        print(format_sweep_table(sweep))
    print("\nInterpolation θ_α = (1 − α) θ_AT + α θ_FT"
          + (" (the chosen candidate's):" if sweep is not None else ":"))
    print(format_interpolation_table(result["interpolation"]["points"], result["chosen_alpha"],
                                     result["interpolation"]["selection_split"]))
    before, after = result["before"], result["after"]
    print(f"\nclean  {before['clean_accuracy']:.2f}% -> {after['clean_accuracy']:.2f}%   "
          f"robust {before['robust_accuracy']:.2f}% -> {after['robust_accuracy']:.2f}%   "
          f"(test split; α = {result['chosen_alpha']:g}, module {result['selected_module']})")
    entry = f" (checkpoint entry {config.checkpoint_entry!r})" if config.checkpoint_entry else ""
    curves = f", {args.out}/curves.json (every candidate's curve)" if sweep is not None else ""
    print(f"wrote {args.out}/tuned.safetensors{entry}{curves} and {args.out}/result.json")
    return 0


def _command_demo_checkpoint(args: argparse.Namespace) -> int:
    from rift.demo import DIGITS_DEMO_CONFIG, make_digits_checkpoint

    out = Path(args.out)
    if out.is_dir():
        raise CliInputError(f"--out {out}: a folder; give a file name, e.g. "
                            f"{out / 'digits.safetensors'}")
    _refuse_existing(out, "--out", args.overwrite)
    made = _missing_folders(out.parent)
    _check_writable_folder(out.parent, "--out")
    config_out = Path(args.config_out) if args.config_out else None
    if config_out is not None:
        # Checked before the training: a bad path found after it wasted the run.
        if config_out.is_dir():
            raise CliInputError(f"--config-out {config_out}: a folder; give a file name, e.g. "
                                f"{config_out / 'config.json'}")
        _refuse_existing(config_out, "--config-out", args.overwrite)
        made += _missing_folders(config_out.parent)
        _check_writable_folder(config_out.parent, "--config-out")
    try:
        metrics = make_digits_checkpoint(out, seed=args.seed)
    except BaseException:
        _remove_empty(made)  # as a refused run's: no empty folders left by a stopped training
        raise
    if config_out is not None:
        # The matching job's RiftConfig, as `riftctl jobs create --config` and the README's
        # examples read it: without it a first user had a checkpoint and no config to run.
        config_out.write_text(json.dumps(DIGITS_DEMO_CONFIG, indent=2) + "\n")
        metrics["config"] = str(config_out)
    print(json.dumps(metrics, indent=2))
    return 0


def _refuse_existing(path: Path, flag: str, overwrite: bool) -> None:
    """A file already at ``path`` was replaced without a word: ``demo-checkpoint --out
    model.safetensors`` wrote over the user's own model of that name (and ``--config-out``
    over their config).

    Raises:
        CliInputError: naming ``flag``, unless ``overwrite``.
    """
    if not overwrite and (path.exists() or path.is_symlink()):
        raise CliInputError(f"{flag} {path}: a file of that name exists; give another name, or "
                            "--overwrite to replace it")


def _command_architectures(_: argparse.Namespace) -> int:
    from rift.models import list_architectures

    print("\n".join(list_architectures()))
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, as every other error of the command
    (argparse printed the whole usage, up to eight lines, above its error), with the closest
    option for a mistyped one (``--sed``: did you mean ``--seed``?). Subcommands' parsers are
    of this class too (``add_subparsers`` makes them of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}{self._closest_option(message)} "
                     f"(`{self.prog} --help` lists the options)\n")

    def _closest_option(self, message: str) -> str:
        if not message.startswith("unrecognized arguments: "):
            return ""
        known = _option_strings(self)
        for word in message.removeprefix("unrecognized arguments: ").split():
            flag = word.split("=", 1)[0]
            if flag.startswith("--"):
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
                if close:
                    return f"; did you mean {close[0]}?"
        return ""


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every long option of ``parser`` and of its subcommands' parsers."""
    found: list[str] = []
    for action in parser._actions:
        found.extend(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_option_strings(sub))
    return sorted(set(found))


def make_parser() -> argparse.ArgumentParser:
    # The module docstring is reStructuredText; --help shows it without the ``quotes``.
    description = __doc__.splitlines()[0].replace("``", "")
    parser = _OneLineParser(prog="python -m rift", description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the release of this library and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run MRC, fine-tuning and interpolation")
    run.add_argument("--checkpoint", type=_path_text, required=True,
                     help=".safetensors or PyTorch state dict")
    run.add_argument("--checkpoint-entry", metavar="KEY_PATH",
                     help="the weights to tune when the checkpoint holds several, e.g. ema, "
                     "state_dict_ema or model.state_dict (sets checkpoint_entry)")
    run.add_argument("--config", type=_path_text,
                     help="JSON file with a RiftConfig, or a run's manifest.json or result.json "
                     "(its config; flags override it)")
    run.add_argument("--arch", help="architecture name, e.g. resnet18")
    run.add_argument("--num-classes", type=int,
                     help="the model's output classes (architecture.num_classes; default 10)")
    run.add_argument("--dataset", help="cifar10, cifar100, svhn, mnist, digits, npz, imagefolder")
    run.add_argument("--data-root", type=_path_text, help="data directory for built-in datasets")
    run.add_argument("--data-path", type=_path_text, help="file or folder for npz / imagefolder")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--precision", choices=["fp32", "bf16"],
                     help="arithmetic of the run (precision; default fp32)")
    run.add_argument("--seed", type=int, help="seed of every random choice (seed; default 0)")
    run.add_argument("--set", action="append", type=_parse_override, metavar="KEY=VALUE",
                     help="override any config field, e.g. --set mrc.steps=5 (JSON values; an "
                     "object is merged into the section)")
    run.add_argument("--out", type=_path_text, default="rift-output",
                     help="output folder (default: rift-output); a run with the same "
                     "checkpoint, dataset and config "
                     "resumes from the stages saved there, any other run is refused")
    run.add_argument("--fresh", action="store_true",
                     help="delete the stage outputs already in --out and start over")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_command_run)

    demo = commands.add_parser("demo-checkpoint",
                               help="adversarially train small_cnn on sklearn digits")
    demo.add_argument("--out", type=_path_text, required=True,
                      help="the checkpoint file to write, e.g. digits.safetensors")
    demo.add_argument("--seed", type=int, default=0,
                      help="initial weights and training randomness (default 0)")
    demo.add_argument("--config-out", type=_path_text, metavar="CONFIG_JSON",
                      help="also write a matching job config (a RiftConfig as JSON) for "
                      "`python -m rift run --config`, `riftctl jobs create --config` or the "
                      "API's job 'config'")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace files already at --out and --config-out (else refused)")
    demo.set_defaults(handler=_command_demo_checkpoint)

    arch = commands.add_parser("architectures", help="list the architecture names")
    arch.set_defaults(handler=_command_architectures)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a reader that left shows here, inside the handlers below
        return code
    except BrokenPipeError:
        # The reader left early (`python -m rift architectures | head -1`): it has what it
        # wanted, as riftctl and rift-admin treat it; this was "error: Broken pipe", exit 2.
        # stdout goes to /dev/null so that the interpreter's last flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        # Ctrl-C: stage outputs are written whole or not at all (rift.stage_outputs), so the
        # folder holds only finished stages; the same command resumes after them.
        # A run stopped before its first save has no folder left (_remove_empty).
        out = getattr(args, "out", None)
        resume = (f"; the stages saved in {out} are kept, the same command resumes after them"
                  if args.command == "run" and out is not None and Path(out).is_dir() else
                  "; nothing was saved" if args.command == "run" else "")
        print(f"interrupted{resume}", file=sys.stderr)
        return 130
    except RiftError as exc:
        # The setting to change, as the service's errors and riftctl name it (" (field: x)").
        field = f" (field: {field_words(exc.field)})" if exc.field else ""
        print(f"error ({exc.code}): {exc.message}{field}", file=sys.stderr)
        return 2
    except CliInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out not writable; one line, no traceback
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
