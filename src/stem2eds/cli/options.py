"""Command-line options generated from the settings dataclasses.

A setting is defined once, in its dataclass (``TrainConfig``,
``PreprocessSettings``, ...): its name, type, default and the description in
the class's numpydoc ``Attributes`` section. A subcommand lists which
settings it exposes and, where the flag differs from the setting's name,
which flag names it; the option's help text, its type, its choices (from a
``{"a", "b"}`` type spec) and the ``(default: ...)`` shown by ``--help`` come
from the dataclass. Options default to ``None`` so that :func:`given` returns
only what the user typed, to override a configuration file or stored
settings.

>>> from stem2eds.train.config import TrainConfig        # doctest: +SKIP
>>> add_settings_options(parser, TrainConfig, ["loss", Option("learning_rate", "--lr")])
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Option:
    """How one setting appears on the command line.

    Attributes
    ----------
    setting : str
        Field name in the settings dataclass (also the ``args`` attribute).
    flag : str or None
        Flag, e.g. ``"--lr"``; None: ``--`` + the name with dashes.
    metavar : str or None
    type : callable or None
        Parser of the flag's text; None: from the field's annotation.
    help : str or None
        Replaces the dataclass description (for a flag whose text must say
        more than the setting, e.g. a unit on the command line).
    """

    setting: str
    flag: str | None = None
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    help: str | None = None


def attribute_docs(cls: type) -> dict[str, tuple[str, str]]:
    """``{name: (type spec, description)}`` from a class's numpydoc Attributes section."""
    doc = (cls.__doc__ or "").expandtabs()
    match = re.search(r"^\s*Attributes\n\s*-+\n(.*?)(?:^\s*\w[\w ]*\n\s*-+\n|\Z)", doc,
                      re.S | re.M)
    if not match:
        return {}
    out: dict[str, tuple[str, str]] = {}
    names: list[str] = []
    spec, lines = "", []
    indent = None

    def flush():
        text = " ".join(" ".join(lines).split())
        for n in names:
            out[n] = (spec, text)

    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth == indent:
            if names:
                flush()
            head, _, spec = line.strip().partition(" : ")
            names = [n.strip() for n in head.split(",")]
            spec, lines = spec.strip(), []
        else:
            lines.append(line.strip())
    if names:
        flush()
    return out


def _plain(text: str) -> str:
    """Docstring markup as terminal text: ``x`` and :func:`x` become x."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _choices(spec: str) -> tuple[str, ...] | None:
    match = re.match(r"\{(.*)\}", spec)
    if not match:
        return None
    return tuple(s.strip().strip("\"'") for s in match.group(1).split(","))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _parser_for(cls: type, name: str) -> Callable[[str], Any] | None:
    hint = typing.get_type_hints(cls).get(name)
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    for candidate in (int, float):
        if candidate in args and len(args) == 1:
            return candidate
    if float in args:
        return float
    return None


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` with an InputError turned into argparse's own one-line usage error."""
    from ..errors import InputError

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names it in errors
    return convert


def _describe_default(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        value = f"{value[0]}x{value[1]}"  # a scan shape, as typed: ROWSxCOLS
    elif isinstance(value, (tuple, list)):
        value = ",".join(str(v) for v in value)
    if dataclasses.is_dataclass(value):
        return ""
    return f" (default: {value})"


def add_settings_options(parser: argparse.ArgumentParser, cls: type,
                         options: Sequence[Option | str]) -> None:
    """Add one flag per listed setting of dataclass ``cls`` to ``parser``.

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
    cls : dataclass type
        Settings class whose fields, defaults and Attributes docs are used.
    options : sequence of Option or str
        The settings to expose (a plain string is ``Option(name)``).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    docs = attribute_docs(cls)
    flags = dict(parser.get_default("setting_flags") or {})
    for item in options:
        opt = Option(item) if isinstance(item, str) else item
        if opt.setting not in fields:
            raise ValueError(f"{cls.__name__} has no setting {opt.setting!r}")
        spec, text = docs.get(opt.setting, ("", ""))
        if not (opt.help or text):
            raise ValueError(f"{cls.__name__}.{opt.setting} has no description in its "
                             "Attributes docstring")
        kwargs: dict[str, Any] = {"dest": opt.setting, "default": None}
        choices = _choices(spec)
        if choices and opt.type is None:
            kwargs["choices"] = choices
        parse = opt.type or _parser_for(cls, opt.setting)
        if parse is not None:
            kwargs["type"] = _argparse_type(parse)
        if "choices" not in kwargs:
            kwargs["metavar"] = opt.metavar or (opt.flag or opt.setting).lstrip("-").replace(
                "-", "_").upper()
        help_text = _plain(opt.help or text).replace("%", "%%")
        kwargs["help"] = help_text + _describe_default(_default(fields[opt.setting]))
        flag = opt.flag or "--" + opt.setting.replace("_", "-")
        parser.add_argument(flag, **kwargs)
        flags[opt.setting] = flag
    parser.set_defaults(setting_flags=flags)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` that were given on the command line (not None).

    Only options added by :func:`add_settings_options` count: a command's
    own argument that shares a setting's name (``experiment --strategy``
    vs ``TrainConfig.strategy``) is not a setting.
    """
    names = {f.name for f in dataclasses.fields(cls)} & set(vars(args).get("setting_flags") or {})
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def name_flags(message: str, flags: dict[str, str]) -> str:
    """A library message with the settings it names written as this command's flags.

    Library errors name settings (``max_epochs must be at least 1``); on the
    command line the user typed flags (``--epochs``). A setting is replaced
    where it is unambiguous: a name in backquotes (`` `beam_radius` ``, the
    convention of library messages) anywhere, with this command's flag or
    else the name with dashes; a keyword (``resume=True`` becomes
    ``--resume``, ``device="cpu"`` becomes ``--device cpu``); an unquoted
    name with an underscore anywhere; a plain word only at the start of the
    message.
    """
    message = re.sub(r"`([a-z][a-z0-9_]*)`",
                     lambda m: flags.get(m[1], "--" + m[1].replace("_", "-")), message)
    for setting, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        keyword = rf"(?<![\w-]){re.escape(setting)}=(True\b|\"[^\"]*\"|'[^']*'|[^\s,;()]+)"
        message = re.sub(keyword, lambda m: flag if m.group(1) == "True"
                         else f"{flag} {m.group(1).strip(chr(34) + chr(39))}", message)
        if "_" in setting:
            message = re.sub(rf"(?<![\w-]){re.escape(setting)}(?![\w-])", flag, message)
        elif re.match(rf"{re.escape(setting)}\b", message):
            message = flag + message[len(setting):]
    return message


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose``, the same on every command (mutually exclusive).

    ``args.quiet``: no progress bars or notes on stderr (errors still show).
    ``args.verbose``: also the file-reading libraries' warnings (the command
    otherwise counts them in one line; ``--debug`` shows them too).
    """
    group = parser.add_argument_group("output").add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bars or notes on stderr (errors still show)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="also show the file-reading libraries' warnings")
