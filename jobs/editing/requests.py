"""Edit requests built from API updates.

An :class:`EditRequest` is a fact in EasyEdit's shape: a prompt with ``{}``
where the subject goes, the subject (the old API, e.g. ``DataFrame.append``),
the new target (``pd.concat``) and the old ground truth, plus paraphrase
prompts (generalization) and prompts about unrelated, stable APIs (locality).

Sources: the built-in migrations and CodeUpdateArena records carry
``old_api``/``new_api``; ReCode-format records carry only old and new code, so
the subject and target are the call that disappears and the one that appears
(:func:`api_diff`). A record yielding no request is still answered by the
edited model; it just adds no edit.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from data.records import TaskRecord

# Conventional import aliases, so targets read the way code writes them ("pd.concat").
ALIASES = {"pandas": "pd", "numpy": "np", "matplotlib.pyplot": "plt", "tensorflow": "tf", "seaborn": "sns"}

PROMPT = "The replacement for the removed {} is"
PARAPHRASES = (
    "# {} no longer works; call",
    "Code that used {} should now use",
    "Instead of {}, current code calls",
)
# Unrelated, stable APIs: an edit should not change what the model says about them.
LOCALITY = (
    ("To parse a JSON string in Python, call", "json.loads"),
    ("To serialise an object to JSON text, call", "json.dumps"),
    ("To join path components, call", "os.path.join"),
    ("To sort a list without changing it, call", "sorted"),
    ("To read a CSV file into a DataFrame, call", "pd.read_csv"),
    ("To create an array of zeros, call", "np.zeros"),
    ("To compile a regular expression, call", "re.compile"),
    ("To get the current time in seconds, call", "time.time"),
    ("To count items in an iterable, use", "collections.Counter"),
    ("To copy a nested object, call", "copy.deepcopy"),
)


@dataclass(frozen=True)
class EditRequest:
    case_id: str
    prompt: str  # contains "{}" where the subject goes
    subject: str
    target_new: str  # starts with a space: it continues the prompt
    ground_truth: str  # the old API, what the model said before
    paraphrases: tuple[str, ...] = ()  # also with "{}"
    locality: tuple[tuple[str, str], ...] = ()  # (prompt, answer) about unrelated APIs
    record_ids: tuple[str, ...] = field(default=())  # the records this fact comes from

    def text(self, template: str | None = None) -> str:
        return (template or self.prompt).replace("{}", self.subject)


def short_name(dotted: str, library: str) -> str:
    """``pandas.DataFrame.append`` -> ``DataFrame.append``; ``pandas.concat`` -> ``pd.concat``."""
    for full, alias in sorted(ALIASES.items(), key=lambda kv: -len(kv[0])):
        if dotted.startswith(full + "."):
            rest = dotted[len(full) + 1:]
            return rest if rest[:1].isupper() else f"{alias}.{rest}"
    parts = dotted.split(".")
    # From the first class name on (matplotlib.axes.Axes.grid -> Axes.grid); module functions keep their path.
    upper = next((i for i, p in enumerate(parts) if p[:1].isupper()), None)
    return ".".join(parts[upper:]) if upper else dotted


def _called_names(code: str) -> list[str]:
    """Dotted names of every call in ``code``, in source order (``df.append(x)`` gives ``df.append``)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                names.append(".".join([f.id, *reversed(parts)]))
    return sorted(set(names), key=names.index)


def api_diff(old_code: str, new_code: str) -> tuple[str | None, str | None]:
    """The first call only the old code makes and the first only the new code makes (either may be None)."""
    old, new = _called_names(old_code), _called_names(new_code)
    gone = [n for n in old if n not in new]
    came = [n for n in new if n not in old]
    return (gone[0] if gone else None), (came[0] if came else None)


def _subject_target(rec: TaskRecord) -> tuple[str, str] | None:
    u = rec.update
    if u.old_api and u.new_api and u.old_api != u.new_api:
        return short_name(u.old_api, u.library), short_name(u.new_api, u.library)
    if u.old_api and u.docs:
        # Same name, new behaviour (CodeUpdateArena): the fact is the new signature.
        signature = u.docs.strip().splitlines()[0].strip()
        return short_name(u.old_api, u.library), signature[:80]
    if rec.old_code and rec.reference:
        gone, came = api_diff(rec.old_code, rec.reference)
        if gone and came:
            return gone, came
    return None


def requests_from_records(records: list[TaskRecord], n_paraphrases: int = 2, n_locality: int = 3,
                          limit: int | None = None) -> list[EditRequest]:
    """One request per distinct (subject, target) among the records, in record order."""
    by_fact: dict[tuple[str, str], list[str]] = {}
    for rec in records:
        st = _subject_target(rec)
        if st is not None and st[0] != st[1]:
            by_fact.setdefault(st, []).append(rec.id)
    out = []
    for i, ((subject, target), ids) in enumerate(by_fact.items()):
        loc = tuple(LOCALITY[(i + j) % len(LOCALITY)] for j in range(min(n_locality, len(LOCALITY))))
        out.append(EditRequest(
            case_id=ids[0], prompt=PROMPT, subject=subject, target_new=" " + target.strip(),
            ground_truth=" " + subject, paraphrases=PARAPHRASES[:n_paraphrases],
            locality=tuple((p, " " + a) for p, a in loc), record_ids=tuple(ids),
        ))
    return out[:limit] if limit is not None else out
