"""Container images of the local node: the repository's Dockerfiles stand in for images.

There is no container runtime here, so an image is its Dockerfile read for the parts that decide
how the container's process starts: ENTRYPOINT, CMD, ENV, WORKDIR and USER (exec form for
ENTRYPOINT and CMD). The files the image would contain are the repository's own packages,
installed in the repository's virtual environment, whose `bin` directory comes first on PATH.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
VIRTUAL_ENVIRONMENT_BIN = REPOSITORY_ROOT / ".venv" / "bin"

# Image repository name (without registry and tag) -> Dockerfile, relative to the repository.
DOCKERFILES = {
    "taskraft": Path("node/Dockerfile"),
    "taskraft-operator": Path("operator/Dockerfile"),
}

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnknownImageError(Exception):
    """The image names none of the repository's Dockerfiles."""


@dataclass(frozen=True)
class ImageUser:
    """An account a RUN instruction creates (`useradd`), for the image's /etc/passwd."""

    name: str
    user_id: int
    group: str  # a group name or number
    home: str
    shell: str


@dataclass(frozen=True)
class ImageConfig:
    """What a Dockerfile says about starting its container, and the accounts it adds."""

    image_id: str
    entrypoint: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    working_directory: str = "/"
    user: str = ""
    users: tuple[ImageUser, ...] = ()
    groups: tuple[tuple[str, int], ...] = ()  # (name, id) from `groupadd`

    def passwd_entry(self, user_id: int) -> ImageUser | None:
        return next((user for user in self.users if user.user_id == user_id), None)

    def group_id(self, group: str) -> int | None:
        if group.isdigit():
            return int(group)
        return next((number for name, number in self.groups if name == group), None)

    def passwd_lines(self) -> list[str]:
        lines = []
        for user in self.users:
            group = self.group_id(user.group) or 0
            lines.append(f"{user.name}:x:{user.user_id}:{group}::{user.home}:{user.shell}")
        return lines

    def group_lines(self) -> list[str]:
        return [f"{name}:x:{number}:" for name, number in self.groups]


def repository_name(image: str) -> str:
    """`registry.example:5000/team/taskraft:0.1.0@sha256:...` -> `taskraft`."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def resolve_image(image: str, root: Path = REPOSITORY_ROOT) -> ImageConfig:
    name = repository_name(image)
    relative = DOCKERFILES.get(name)
    if relative is None:
        known = ", ".join(sorted(DOCKERFILES))
        raise UnknownImageError(
            f'image "{image}" is not one of this repository\'s Dockerfiles (known: {known})'
        )
    return parse_dockerfile((root / relative).read_text(), source=str(relative))


def parse_dockerfile(text: str, *, source: str = "Dockerfile") -> ImageConfig:
    entrypoint: list[str] = []
    command: list[str] = []
    environment: dict[str, str] = {}
    working_directory = "/"
    user = ""
    users: list[ImageUser] = []
    groups: list[tuple[str, int]] = []
    for instruction, argument in _instructions(text):
        if instruction == "RUN":
            _accounts(argument, users, groups)
        elif instruction == "ENTRYPOINT":
            entrypoint = _exec_form(argument)
            # Docker: setting ENTRYPOINT clears a CMD inherited from the base image.
            command = []
        elif instruction == "CMD":
            command = _exec_form(argument)
        elif instruction == "ENV":
            environment.update(_environment(argument, environment))
        elif instruction == "WORKDIR":
            target = _substitute(argument.strip(), environment)
            working_directory = str(Path(working_directory) / target)
        elif instruction == "USER":
            user = _substitute(argument.strip(), environment)
    digest = hashlib.sha256(f"{source}\n{text}".encode()).hexdigest()
    return ImageConfig(
        image_id=f"sha256:{digest}",
        entrypoint=entrypoint,
        command=command,
        environment=environment,
        working_directory=working_directory,
        user=user,
        users=tuple(users),
        groups=tuple(groups),
    )


def _accounts(command: str, users: list[ImageUser], groups: list[tuple[str, int]]) -> None:
    """The `groupadd` and `useradd` commands of a RUN instruction (with explicit ids)."""
    for part in re.split(r"&&|;|\|\|", command):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        if not words or words[0] not in ("groupadd", "useradd"):
            continue
        options: dict[str, str] = {}
        positional: list[str] = []
        index = 1
        while index < len(words):
            word = words[index]
            if word.startswith("-") and "=" in word:
                key, _, value = word.partition("=")
                options[key] = value
            elif word in _VALUE_OPTIONS and index + 1 < len(words):
                options[word] = words[index + 1]
                index += 1
            elif not word.startswith("-"):
                positional.append(word)
            index += 1
        if not positional:
            continue
        name = positional[-1]
        if words[0] == "groupadd":
            number = options.get("--gid") or options.get("-g")
            if number and number.isdigit():
                groups.append((name, int(number)))
            continue
        number = options.get("--uid") or options.get("-u")
        if number and number.isdigit():
            users.append(
                ImageUser(
                    name=name,
                    user_id=int(number),
                    group=options.get("--gid") or options.get("-g") or "0",
                    home=options.get("--home-dir") or options.get("-d") or f"/home/{name}",
                    shell=options.get("--shell") or options.get("-s") or "/bin/sh",
                )
            )


_VALUE_OPTIONS = {
    "--uid",
    "-u",
    "--gid",
    "-g",
    "--home-dir",
    "-d",
    "--shell",
    "-s",
    "--comment",
    "-c",
    "--groups",
    "-G",
    "--key",
    "-K",
}


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            instruction, _, argument = pending.strip().partition(" ")
            result.append((instruction.upper(), argument.strip()))
        pending = ""
    return result


def _exec_form(argument: str) -> list[str]:
    """ENTRYPOINT/CMD: the JSON (exec) form; the shell form runs under /bin/sh -c."""
    try:
        parsed = json.loads(argument)
    except ValueError:
        return ["/bin/sh", "-c", argument]
    if not isinstance(parsed, list) or not all(isinstance(part, str) for part in parsed):
        return ["/bin/sh", "-c", argument]
    return parsed


def _environment(argument: str, current: dict[str, str]) -> dict[str, str]:
    """`ENV A=1 B="two words"` or the legacy `ENV A value with spaces`."""
    if "=" not in argument.split(" ", 1)[0]:
        name, _, value = argument.partition(" ")
        return {name: _substitute(value.strip(), current)}
    values: dict[str, str] = {}
    for word in shlex.split(argument, posix=True):
        name, _, value = word.partition("=")
        values[name] = _substitute(value, {**current, **values})
    return values


_REFERENCE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def _substitute(text: str, environment: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        return environment.get(name, "")

    return _REFERENCE.sub(replace, text)


def with_virtual_environment_first(path: str) -> str:
    parts = [part for part in path.split(":") if part and part != str(VIRTUAL_ENVIRONMENT_BIN)]
    return ":".join([str(VIRTUAL_ENVIRONMENT_BIN), *parts])
