"""One generic registry for methods, tasks, encoders and datasets.

Why this shape: listing must be instant (``alignbench ls`` < 2 s) while the
registered objects live in modules that import torch.  So names are
*discovered* by reading the source files' decorators with :mod:`ast` (no
import), and a module is imported only when one of its names is asked for.
Adding a method is one file in ``methods/``: the scan finds its decorator.

Other installed packages add names through entry points (groups
``alignbench.methods``, ``alignbench.tasks``, ``alignbench.encoders``,
``alignbench.datasets``): their names come from the package metadata, so they
are listed without importing the plug-in; a plug-in that fails to import, or
that claims a name already taken, is reported by name and never breaks the
other names.  Dataset cards (``alignbench.datasets.cards``) add names at run
time through :meth:`Registry.declare`.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from alignbench.errors import PluginError, UnknownNameError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Entry:
    """What the registry knows about one name before (and after) importing it."""

    name: str
    module: str
    aliases: tuple[str, ...] = ()
    summary: str = ""
    obj: Any = None
    is_family: bool = False  # prefix family such as ``timm:<model>``
    origin: str = ""  # "" for built-ins; "plug-in <distribution>" or "card <file>" otherwise
    loader: Callable[[], Any] | None = None  # imports a plug-in's object (entry point ``load``)


@dataclass
class Registry(Generic[T]):
    """A name → object registry with aliases, prefix families and suggestions.

    ``kind`` is the noun used in messages ("method"), ``packages`` the dotted
    packages whose modules are scanned, ``decorator`` the decorator's name
    (``register_method``); ``family_decorator`` registers prefix families
    (``timm:`` → a factory taking the part after the colon); ``group`` is the
    entry-point group other packages register plug-ins in.
    """

    kind: str
    packages: tuple[str, ...]
    decorator: str
    family_decorator: str | None = None
    group: str | None = None
    hooks: tuple[str, ...] = ()  # "module:function" called after the scan to declare more names (dataset cards)
    _entries: dict[str, Entry] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _scanned: bool = False
    problems: dict[str, str] = field(default_factory=dict)  # plug-in name → why it was skipped or failed

    # -- registration (runs at import of the defining module) ---------------
    def register(self, name: str, *, aliases: tuple[str, ...] | list[str] = ()) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self._add(name, obj.__module__, tuple(aliases), _summary(obj), obj, is_family=False)
            try:
                setattr(obj, "registry_name", name)
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def register_family(self, prefix: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self._add(prefix, obj.__module__, (), _summary(obj), obj, is_family=True)
            return obj

        return deco

    def _add(self, name, module, aliases, summary, obj, is_family) -> None:
        e = self._entries.get(name)
        if e is not None and obj is not None and e.module != module and (e.obj is not None or not e.loader):
            # a second module registering a taken name (a plug-in shadowing a built-in) must not win silently
            raise PluginError(f"{module} registers {self.kind} {name!r}, which already exists "
                              f"({e.origin or e.module}); choose another name")
        if e is None:
            e = self._entries[name] = Entry(name, module, aliases, summary, None, is_family)
        e.obj, e.module, e.summary, e.is_family = obj, module, summary or e.summary, is_family
        e.aliases = tuple(dict.fromkeys(e.aliases + tuple(aliases)))
        for a in e.aliases:
            self._aliases[a] = name

    # -- discovery without import --------------------------------------------
    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for pkg in self.packages:
            spec = importlib.util.find_spec(pkg)
            if spec is None or not spec.submodule_search_locations:
                continue
            for loc in spec.submodule_search_locations:
                for info in pkgutil.iter_modules([loc]):
                    path = Path(loc) / f"{info.name}.py"
                    if not path.exists():
                        continue
                    for name, aliases, summary, fam in _decorated(path, self.decorator, self.family_decorator):
                        if name not in self._entries:
                            self._add(name, f"{pkg}.{info.name}", aliases, summary, None, fam)
        if self.group:
            self._scan_plugins()
        for hook in self.hooks:
            module, _, fn = hook.partition(":")
            getattr(importlib.import_module(module), fn)()

    def _scan_plugins(self) -> None:
        """Entry points of ``group`` from installed distributions: names from metadata, nothing imported."""
        from importlib.metadata import entry_points

        try:
            eps = list(entry_points(group=self.group))
        except Exception as exc:  # noqa: BLE001 - unreadable metadata of one package must not break listing
            log.warning("cannot read %s entry points: %s", self.group, exc)
            return
        for ep in eps:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
            taken = self._entries.get(ep.name) or self._entries.get(self._aliases.get(ep.name, ""))
            if taken is not None:
                self.problems[ep.name] = (f"plug-in {ep.value!r} from {dist} registers {self.kind} {ep.name!r}, "
                                          f"which already exists ({taken.origin or taken.module}); ignored")
                log.warning("%s", self.problems[ep.name])
                continue
            module = ep.value.partition(":")[0].strip()
            self._entries[ep.name] = Entry(ep.name, module, (), f"(plug-in from {dist})", None, False,
                                           origin=f"plug-in {dist} ({ep.value})", loader=ep.load)

    def declare(self, name: str, obj: Any, *, summary: str = "", origin: str = "") -> None:
        """Add a ready object under ``name`` at run time (dataset cards); a taken name is an error."""
        self._scan()
        taken = self._entries.get(name) or self._entries.get(self._aliases.get(name, ""))
        if taken is not None and taken.origin != origin:
            raise PluginError(f"{origin or 'a declaration'} names {self.kind} {name!r}, which already exists "
                              f"({taken.origin or taken.module}); choose another name")
        self._entries[name] = Entry(name, getattr(obj, "__module__", ""), (), summary, obj, False, origin=origin)

    def entries(self) -> list[Entry]:
        """All entries, sorted; no module is imported."""
        self._scan()
        return sorted(self._entries.values(), key=lambda e: (e.is_family, e.name))

    def names(self, *, families: bool = False) -> list[str]:
        return [e.name for e in self.entries() if families or not e.is_family]

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
            return True
        except UnknownNameError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def resolve(self, name: str) -> tuple[Entry, str | None]:
        """Return the entry for ``name`` and, for a family, the part after ``prefix:``."""
        self._scan()
        key = name.strip()
        key = self._aliases.get(key, key)
        if key in self._entries and not self._entries[key].is_family:
            return self._entries[key], None
        low = key.lower()
        for n, e in self._entries.items():
            if n.lower() == low and not e.is_family:
                return e, None
        if ":" in key:
            prefix, rest = key.split(":", 1)
            e = self._entries.get(prefix)
            if e is not None and e.is_family and rest:
                return e, rest
        raise UnknownNameError(self.kind, name, self.suggest(name), self.names(families=False))

    def suggest(self, name: str) -> list[str]:
        pool = list(self._entries) + list(self._aliases)
        return difflib.get_close_matches(name.lower(), [p.lower() for p in pool], n=3, cutoff=0.5)

    def get(self, name: str) -> Any:
        """Import lazily and return the registered object (class or factory).

        For a family name (``timm:vit_tiny``) a callable is returned that
        forwards the part after the prefix as the first argument.
        """
        entry, rest = self.resolve(name)
        if entry.obj is None and entry.loader is not None:
            self._load_plugin(entry)
        elif entry.obj is None:
            importlib.import_module(entry.module)
            entry = self._entries[entry.name]
            if entry.obj is None:
                raise RuntimeError(f"{entry.module} did not register {self.kind} {entry.name!r}")
        if rest is None:
            return entry.obj
        fam = entry.obj

        def factory(*args: Any, **kwargs: Any) -> Any:
            return fam(rest, *args, **kwargs)

        factory.registry_name = name  # type: ignore[attr-defined]
        return factory

    def _load_plugin(self, entry: Entry) -> None:
        """Import a plug-in's object; any failure becomes one PluginError naming the plug-in."""
        try:
            obj = entry.loader()  # type: ignore[misc]
        except PluginError as exc:
            self.problems[entry.name] = str(exc)
            raise PluginError(f"{self.kind} {entry.name!r} from {entry.origin}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - whatever a third-party import raises, say which plug-in
            self.problems[entry.name] = f"{type(exc).__name__}: {exc}"
            raise PluginError(f"{self.kind} {entry.name!r} from {entry.origin} failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        entry.obj = entry.obj if entry.obj is not None else obj  # its decorator may have set it already
        try:
            setattr(entry.obj, "registry_name", entry.name)
        except (AttributeError, TypeError):
            pass

    def canonical(self, name: str) -> str:
        entry, rest = self.resolve(name)
        return entry.name if rest is None else f"{entry.name}:{rest}"

    def load_all(self) -> dict[str, Any]:
        """Import every module and return {name: object} (used by conformance tests)."""
        return {n: self.get(n) for n in self.names()}


def _summary(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _decorated(path: Path, decorator: str, family_decorator: str | None):
    """Yield (name, aliases, summary, is_family) for decorated defs in a source file."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:  # surface later, at import, with a real traceback
        log.warning("cannot parse %s: %s", path, exc)
        return
    for node in ast.walk(tree):
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for dec in node.decorator_list:
            if not isinstance(dec, ast.Call):
                continue
            fn = dec.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if fname not in (decorator, family_decorator) or not dec.args:
                continue
            if not isinstance(dec.args[0], ast.Constant):
                continue
            aliases: tuple[str, ...] = ()
            for kw in dec.keywords:
                if kw.arg == "aliases" and isinstance(kw.value, (ast.Tuple, ast.List)):
                    aliases = tuple(e.value for e in kw.value.elts if isinstance(e, ast.Constant))
            yield dec.args[0].value, aliases, _summary_node(node), fname == family_decorator


def _summary_node(node: ast.AST) -> str:
    doc = ast.get_docstring(node) or ""  # type: ignore[arg-type]
    return doc.strip().splitlines()[0] if doc.strip() else ""


METHODS: Registry = Registry("method", ("alignbench.methods",), "register_method", group="alignbench.methods")
TASKS: Registry = Registry("task", ("alignbench.tasks",), "register_task", group="alignbench.tasks")
ENCODERS: Registry = Registry("encoder", ("alignbench.encoders",), "register_encoder", "register_encoder_family",
                              group="alignbench.encoders")
DATASETS: Registry = Registry("dataset", ("alignbench.datasets",), "register_dataset", group="alignbench.datasets",
                              hooks=("alignbench.datasets.cards:declare_from_environment",))

register_method = METHODS.register
register_task = TASKS.register
register_encoder = ENCODERS.register
register_encoder_family = ENCODERS.register_family
register_dataset = DATASETS.register

REGISTRIES: dict[str, Registry] = {"methods": METHODS, "tasks": TASKS, "encoders": ENCODERS, "datasets": DATASETS}
