"""Settings for a service: a TOML file and the environment under the command line.

Keys are the long option names without the dashes in front (``mqtt-user = "pi"``, ``quiet = true``;
``mqtt_user`` works too). Environment variables are ``FANWATCH_`` + the option name in capitals with ``_``
for ``-`` (``FANWATCH_MQTT_USER=pi``; flags take 1/0, true/false, yes/no, on/off). Precedence: command
line, then environment, then the file, then the built-in defaults. The file is ``--config FILE``, else
``$FANWATCH_CONFIG``; see ``deploy/fanwatch.toml`` for an example.

Everything is checked with the option's own parser, so a bad value is one line naming the file or
variable, the key and the problem. Standard library only (``tomllib``).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path

from fanwatch.errors import FanwatchError

CONFIG_ENV = "FANWATCH_CONFIG"
ENV_PREFIX = "FANWATCH_"
NOT_SETTINGS = {"help", "config", "list_devices"}  # actions, not settings
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(option: str) -> str:
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


def _settings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option name (``mqtt-user``) -> its action, for every option that is a setting."""
    out = {}
    for action in parser._actions:  # argparse has no public accessor for its actions
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in NOT_SETTINGS or action.help == argparse.SUPPRESS:
            continue
        out[longs[0][2:]] = action
    return out


def _is_flag(action: argparse.Action) -> bool:
    return isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))


def _convert(action: argparse.Action, option: str, value, where: str):
    """A value from a file or the environment, checked as the command line would check it."""
    if _is_flag(action):
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in _TRUE | _FALSE:
                raise FanwatchError(f"{where}: {option} is a flag: use true/false (or 1/0), got {value!r}")
            value = low in _TRUE
        if not isinstance(value, bool):
            raise FanwatchError(f"{where}: {option} is a flag: use true or false, got {value!r}")
        # --no-discovery = true means "give the flag": store its constant
        return action.const if value else action.default
    if isinstance(value, (bool, list, dict)):
        raise FanwatchError(f"{where}: {option} takes one value, got {value!r}")
    text = str(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except argparse.ArgumentTypeError as exc:
        raise FanwatchError(f"{where}: {option}: {exc}") from None
    except (TypeError, ValueError):  # what argparse says for type=int, float ...
        name = getattr(action.type, "__name__", "")
        raise FanwatchError(f"{where}: {option}: invalid {name} value: {text!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise FanwatchError(f"{where}: {option} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return converted


def read_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise FanwatchError(f"config file {path}: no such file") from None
    except OSError as exc:
        raise FanwatchError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise FanwatchError(f"config file {path}: not valid TOML ({exc})") from None
    # an optional [fanwatch] table, so the file can share a TOML document with other tools
    if set(data) == {"fanwatch"} and isinstance(data["fanwatch"], dict):
        data = data["fanwatch"]
    return data


def defaults(parser: argparse.ArgumentParser, config: str | os.PathLike | None, environ=None) -> dict:
    """Defaults for ``parser`` from the config file (if any) overlaid by the environment, checked."""
    environ = os.environ if environ is None else environ
    actions = _settings(parser)
    values: dict[str, object] = {}
    if config:
        for key, value in read_file(config).items():
            option = key.replace("_", "-")
            action = actions.get(option)
            if action is None and option == "mqtt-password":
                raise FanwatchError(
                    f"config file {config}: no passwords in the config file; set "
                    "FANWATCH_MQTT_PASSWORD or use mqtt-password-file"
                )
            if action is None:
                raise FanwatchError(
                    f"config file {config}: unknown key {key!r} (keys are the long option names "
                    f"of --help, e.g. mqtt-user)"
                )
            values[action.dest] = _convert(action, option, value, f"config file {config}")
    for option, action in actions.items():
        name = env_name(option)
        if name in environ:
            values[action.dest] = _convert(action, option, environ[name], f"environment {name}")
    return values


def parse_args(parser: argparse.ArgumentParser, argv=None, environ=None) -> argparse.Namespace:
    """``parser.parse_args`` with ``--config FILE`` / ``$FANWATCH_CONFIG`` and ``$FANWATCH_*`` under the
    command line. ``parser`` must have a ``--config`` option."""
    environ = os.environ if environ is None else environ
    first, _ = parser.parse_known_args(argv)
    config = first.config or environ.get(CONFIG_ENV) or None
    parser.set_defaults(**defaults(parser, config, environ))
    args = parser.parse_args(argv)
    args.config = config
    return args
