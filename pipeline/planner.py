"""The refinement planner: the text of a reply to a round → a `Plan` for the child round. Pure, no I/O.

Rules, in order (the README repeats them):
1. A reply over 2×max_length+100 characters is refused unparsed; the instruction must be ≤ max_length.
2. Options anywhere are removed: strength= (0 < s ≤ 1), seed= (0…2³²−1), steps= (1…1000), guidance=/cfg= (0…100).
3. Candidate: `2:` `2.` `2)` `2 -` `#2` first (out of range → PlanError); a bare `2 ` before an edit verb (out of range
   → PlanError) or, in range, before more/less/in/with/at/as/no/without. "3 cats on a sofa" stays content.
4. Prefixes skip rule 5: `prompt: P` (IMAGE, P replaces the parent prompt), `edit: E` (INSTRUCT), `inpaint R: C`.
5. Per clause (split at , ; . ! ? then, but, "and <edit verb>"; please/thanks dropped): "no X", "without X",
   "don't add X" → X to `negative` (CLIP reads "no people" as people); other "don't…"/"keep…" ask to preserve,
   which img2img does anyway: dropped. remove X → INPAINT X with REMOVAL_PROMPT and X negative (the parent
   prompt would paint X back); replace X with Y, change/turn X into Y, make/paint X <adjective> ("red car"),
   give X Y ("give the man a beard": region "the man", "man with a beard", as the beard lies in his outline)
   → INPAINT when X is a definite phrase ("the car", "her hat"; replace: any), else INSTRUCT (it, this, the
   image, the lighting, him, unparsed). Anything else, other languages too, is conditioning: "more vibrant",
   "add a red scarf" (→ "with a red scarf": the encoder reads captions, not commands). One edit and plain
   descriptions keep its mode; several edits become one INSTRUCT edit (a round has one mask).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import asdict, dataclass, replace
from typing import Any

from pipeline.requests import MAX_SEED, Mode

REMOVAL_PROMPT = "background, empty scene"  # fills a removed region; the region's noun goes negative
_LIMITS = {"strength": (0.0, 1.0), "seed": (0, MAX_SEED), "steps": (1, 1000), "guidance": (0.0, 100.0)}


class PlanError(ValueError):
    """The reply cannot become a plan; the message says why and quotes the bad part."""


@dataclass(frozen=True)
class Plan:
    """What a reply asks for. `prompt` is what the pipeline is conditioned on."""

    mode: Mode
    candidate: int | None  # 1-based if the reply named one; else the caller chooses
    prompt: str  # composed / new prompt (IMAGE), the instruction (INSTRUCT), the region's content (INPAINT)
    instruction: str  # the reply without the candidate number and options
    region: str | None = None  # INPAINT: the phrase CLIPSeg looks for
    negative: str = ""  # extra negative-prompt words
    strength: float | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    instruction_weight: float = 1.0  # for the encoder to weight the addition; the prompt stays plain text
    explicit: bool = False  # a prefix chose the mode

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"mode": self.mode.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**(dict(data) | {"mode": Mode(data["mode"])}))

    def describe(self) -> str:
        """A short phrase for the user: "inpainting 'the sky' with 'a sunset'"."""
        if self.mode is Mode.INPAINT:
            removal = self.prompt == REMOVAL_PROMPT
            return f"inpainting {_quote(self.region)} " + ("to remove it" if removal else f"with {_quote(self.prompt)}")
        if self.mode is not Mode.IMAGE or self.explicit:
            return f"{'an instruction edit' if self.mode is Mode.INSTRUCT else 'a new prompt'}: {_quote(self.prompt)}"
        added = _analyse(self.instruction).caption
        text = f"conditioning: adds {_quote(added)}" if added else "conditioning: same prompt"
        return f"{text}, avoiding {_quote(self.negative)}" if self.negative else text


def _quote(text: str | None, limit: int = 200) -> str:
    """User text quoted for the user: not repr(), which turns each invisible character into six
    visible ones (a reply padded with zero-width spaces made the answer too long for Discord)."""
    visible = "".join(c for c in text or "" if c.isprintable() or c in " \u200d")
    return "'" + (visible if len(visible) <= limit else visible[: limit - 1] + "…") + "'"


def plan_refinement(text: str, parent_prompt: str, *, candidates: int = 4, max_length: int = 500,
                    instruction_weight: float = 1.0) -> Plan:
    """Read a reply to a round of `candidates` images made from `parent_prompt` (rules: module docstring)."""
    if candidates < 1 or max_length < 1 or not (math.isfinite(instruction_weight) and instruction_weight > 0):
        raise ValueError(f"invalid planner limits: {candidates=}, {max_length=}, {instruction_weight=}")
    if len(text) > 2 * max_length + 100:  # before any regex runs: bounded work whatever arrives
        raise PlanError(f"the reply is {len(text)} characters long; the limit is {max_length}")
    options, rest = _take_options(_SPACES.sub(" ", _CONTROL.sub(" ", text)).strip())
    candidate, instruction = _take_candidate(rest, candidates)
    if not _visible(instruction):
        raise PlanError("the instruction is empty: say what to change, e.g. '2: make the sky purple'")
    if len(instruction) > max_length:
        raise PlanError(f"the instruction is {len(instruction)} characters long; the limit is {max_length}")
    if (read := _analyse(instruction)).problem:
        raise PlanError(read.problem)
    if read.mode is Mode.IMAGE and not (read.caption or read.explicit or read.negative):
        raise PlanError(f"the instruction is empty: {instruction!r} asks for no change")
    if read.mode is Mode.INPAINT:  # content None: remove the region; "": re-roll it with the parent prompt
        prompt = REMOVAL_PROMPT if read.content is None else (
            read.content or _compose(parent_prompt, "") or _noun(read.region or ""))
    else:
        prompt = _compose(parent_prompt, read.caption) if read.mode is Mode.IMAGE and not read.explicit else read.text
    return Plan(mode=read.mode, candidate=candidate, prompt=prompt, instruction=instruction, region=read.region,
                negative=", ".join(dict.fromkeys(read.negative)), instruction_weight=instruction_weight,
                explicit=read.explicit, **options)


def fallback_to_conditioning(plan: Plan, parent_prompt: str) -> Plan:
    """The same request as img2img conditioning, for want of an instruct model or a masker: the edit re-read as
    caption words ("make it night" → "night", "turn it into a sketch" → "as a sketch", "a sunset")."""
    if plan.mode not in (Mode.INSTRUCT, Mode.INPAINT):
        return plan
    caption = _analyse(plan.instruction).caption
    return replace(plan, mode=Mode.IMAGE, prompt=_compose(parent_prompt, caption), region=None, explicit=False)


_I = re.IGNORECASE  # below, each regex is anchored or led by fixed words over single-spaced text: linear time
_CONTROL, _SPACES = re.compile(r"[\x00-\x1f\x7f-\x9f]"), re.compile(r"\s+")
_OPTION = re.compile(r"(?<![\w=])(strength|seed|steps|guidance|cfg) ?= ?([^\s,;]*)", _I)
_COMMA_RUN, _SPACE_COMMA = re.compile(r"[,;](?: ?[,;])+"), re.compile(r" (?=[,;])")
_INT = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:e[+-]?[0-9]{1,3})?", _I)
_PICK_HASH = re.compile(r"# ?([0-9]+)(?!\w|[.,:][0-9]) ?[:.)]? ?")
_PICK_MARK, _PICK_BARE = re.compile(r"([0-9]+)(?: ?[:.)]| [-–—] )(?![0-9]) ?"), re.compile(r"([0-9]+) ([^\W\d_]+)")
_PREFIX = re.compile(r"(prompt|edit|inpaint)\b ?(.*)", _I)
_EDITS = "make|add|remove|erase|delete|replace|swap|change|turn|give|put|paint|convert|transform|get rid"
_CLAUSE_SPLIT = re.compile(rf" ?[,;]+ ?|(?<![.!?…])[.!?…]+(?: |$)| (?:and then|then|but|and(?= (?:{_EDITS})\b)) ", _I)
_POLITE_HEAD = re.compile(r"(?:(?:please|pls|plz|also|and|now|so|just|maybe|(?:can|could|would) (?:you|u)) )+", _I)
_POLITE_TAIL = frozenset(["please", "pls", "plz", "thanks", "thx", "ty", "too"])
_DONT = re.compile(r"(?:don'?t|don’t|do not|dont|never)(?: (?:add|include|show|draw|put|use|give|make|want) (.+)"
                   r"|\b.*)|(?:keep|leave|preserve|retain)\b.*|nope?", _I)
_NO = re.compile(r"(?:no more|no|without|avoid) (.+)", _I)
_NO_INLINE = re.compile(r" (?:without|with no|but no|and no|and without) (.+)$", _I)
_VERB = re.compile(r"(get rid of|take out|take away|[^\W\d_]+)(?: (.*)|$)", _I)
_PICTURE = r"(?:the|this|that) (?:(?:whole|entire) )?(?:image|picture|pic|photo|scene|painting|drawing|artwork|shot"
_WHOLE = re.compile(rf"it|this|that|everything|all|it all|all of it|{_PICTURE}|thing|one|render)", _I)
_WHOLE_HEAD = re.compile(rf"(?:it all|it|everything|all|{_PICTURE}|thing))(?: |$)", _I)
_IN_PICTURE = re.compile(rf" (?:from|in|of|on) {_PICTURE}|frame)$", _I)
_COLOR_OF = re.compile(r"(?:the |its )?colou?rs? of (.+)", _I)
_WITH, _TO, _INTO = (re.compile(rf"(?:^| )(?:{words}) ", _I) for words in ("with|for|by", "into|to", "into"))
_LIKE, _LOOKS = re.compile(r"(?:looks?|seems?|appears?) like ", _I), re.compile(r"(?:looks?|seems?|appears?|be) ", _I)
_VERBS = {verb: kind for kind, verbs in {
    "remove": "remove|erase|delete|eliminate|get rid of|take out|take away",
    "replace": "replace|swap|switch|exchange|substitute", "change": "change|transform|convert|morph",
    "make": "make|turn|paint|color|colour|dye|recolor|recolour", "give": "give", "add": "add|put|place|include",
    "instruct": "render|redraw|restyle|stylize|stylise|brighten|darken|blur|sharpen|saturate|desaturate|enhance|edit",
}.items() for verb in verbs.split("|")}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TRANSFORMS = _words("change transform convert morph turn make")  # "<verb> X into|to Y"
_SOFT_PICKS = _words("more less in with at as without no")  # "2 more…" picks 2 only when 2 is in range
_DETS = _words("the his her their its my your our that those these this")
_PERSONS = _words("him her them he she they me us")
_GLOBAL = _words("style lighting colors colours color colour palette mood atmosphere weather season tone tones "
                 "vibe aesthetic look feel contrast saturation brightness exposure")
_COLORS = _words("red orange yellow green blue purple violet pink black white gray grey brown gold golden silver "
                 "teal cyan magenta beige turquoise")
_ADJ_START = _COLORS | _words("more less much very bright dark light pale deep slightly somewhat really extra super "
                              "too look looks appear appears seem seems")
_ARTICLES, _NP_STOP = _words("a an some more"), _words("a an and or with without some to into like but")
_LEADING = _DETS | _words("any more a an it")  # dropped from the front of a noun phrase
_ADJ_STOP = _DETS | _PERSONS | _words("a an it with on of at to into from for by in like")


@dataclass(frozen=True)
class _Read:
    """A clause or an instruction, read. `content` (INPAINT): "" = re-roll the region, None = remove it."""

    mode: Mode
    text: str = ""  # INSTRUCT: the edit as the pipeline gets it; explicit IMAGE: the new prompt
    caption: str = ""  # the words conditioning appends to the parent prompt (also the fallback's)
    region: str | None = None
    content: str | None = ""
    negative: tuple[str, ...] = ()
    explicit: bool = False
    verb: bool = True  # False: a plain description, which may extend the edit before it
    problem: str = ""  # why the instruction cannot be planned (a prefix with nothing after it)


def _visible(text: str) -> bool:
    return any(c.isalnum() or unicodedata.category(c)[0] == "S" for c in text)


def _compose(parent: str, addition: str) -> str:
    return ", ".join(part for part in (" ".join(parent.split()).rstrip(" ,;."), addition) if part)


def _take_options(text: str) -> tuple[dict[str, Any], str]:
    found: dict[str, Any] = {}
    for match in _OPTION.finditer(text):
        name = "guidance" if match[1].lower() == "cfg" else match[1].lower()
        if name in found:
            raise PlanError(f"{name} is given twice (again as {match[0][:40]!r}); give it once")
        found[name] = _option_value(name, match[2])
    text = _SPACE_COMMA.sub("", _COMMA_RUN.sub(",", _SPACES.sub(" ", _OPTION.sub(" ", text))))  # ", seed=1," → ","
    return found, text.strip(" ,;")


def _option_value(name: str, raw: str) -> int | float:
    value, (low, high), got = raw.rstrip(".!?)"), _LIMITS[name], f"got {raw[:40]!r}"  # "steps=20." ends a sentence
    if name in ("seed", "steps"):
        if not _INT.fullmatch(value) or not low <= int(value) <= high:
            raise PlanError(f"{name} must be a whole number from {low} to {high}, {got}")
        return int(value)
    number = float(value) if _FLOAT.fullmatch(value) else math.nan
    if not (low < number <= high if name == "strength" else low <= number <= high):  # strength 0 changes nothing
        bounds = "(0, 1]" if name == "strength" else f"[{low:g}, {high:g}]"
        raise PlanError(f"{name} must be a number in {bounds}, {got}")
    return number


def _take_candidate(text: str, candidates: int) -> tuple[int | None, str]:
    bare = _PICK_BARE.match(text)
    word = bare[2].lower() if bare else ""
    strict = word in _VERBS or word in ("get", "take", "please", "pls")
    match = _PICK_HASH.match(text) or _PICK_MARK.match(text) or (bare if strict or word in _SOFT_PICKS else None)
    digits = match[1] if match else ""
    if 0 < len(digits) <= 6 and 1 <= int(digits) <= candidates:
        return int(digits), text[match.end() if match is not bare else len(digits):].strip(" ,;:-–—")
    if match is None or (match is bare and not strict):  # "5 more cats" with 4 candidates: five more cats
        return None, text
    raise PlanError(f"candidate {digits[:12]} is out of range: pick 1 to {candidates}")


def _analyse(instruction: str) -> _Read:
    """An instruction (no number, no options) → its mode and parts: a prefix, else the wording."""
    if match := _PREFIX.match(instruction):
        word, rest = match[1].lower(), match[2]
        if word in ("prompt", "edit") and rest.startswith(":"):
            if not _visible(body := rest[1:].strip()):
                return _Read(Mode.IMAGE, problem=f"the text after '{word}:' is empty")
            mode, caption = (Mode.IMAGE, body) if word == "prompt" else (Mode.INSTRUCT, _read_clauses(body).caption)
            return _Read(mode, body, caption, explicit=True)
        if word == "inpaint" and rest:
            region, colon, content = (part.strip() for part in rest.partition(":"))
            if not colon or not _visible(region):
                return _Read(Mode.IMAGE, problem="inpaint needs a region and a colon: 'inpaint the sky: a sunset'")
            if _visible(content):
                return _Read(Mode.INPAINT, caption=content, region=region, content=content, explicit=True)
            return _Read(Mode.INPAINT, region=region, content=None, negative=_removed([region]), explicit=True)
    return _read_clauses(instruction)


def _read_clauses(text: str) -> _Read:
    edits: list[_Read] = []
    negatives: list[str] = []
    for part in _CLAUSE_SPLIT.split(text):
        positive, negative = _split_negation(_strip_polite(part))
        negatives += [negative] if negative else []
        if positive := _strip_polite(positive):
            edits.append(_classify(positive))
    negatives += _removed([e.region for e in edits if e.region and e.content is None])
    caption, negative = ", ".join(e.caption for e in edits if e.caption), tuple(negatives)
    changes = [e for e in edits if e.mode is not Mode.IMAGE]
    if not changes:
        return _Read(Mode.IMAGE, caption=caption, negative=negative)
    first, rest = edits[0], edits[1:]
    if first is changes[0] and len(changes) == 1 and not any(e.verb for e in rest) and first.mode is Mode.INPAINT \
            and (first.content is not None or not rest):
        # plain descriptions after an inpaint describe its new content: "…with a sunset, pink and orange"
        content = first.content if first.content is None else ", ".join(
            part for part in (first.content, *(e.text for e in rest)) if part)
        return replace(first, caption=content or "", content=content, negative=negative)
    return _Read(Mode.INSTRUCT, ", ".join(e.text for e in edits), caption, negative=negative)


def _strip_polite(clause: str) -> str:
    clause = clause[head.end():] if (head := _POLITE_HEAD.match(clause := clause.strip())) else clause
    words = clause.split(" ")
    while words and (words[-1].lower() in _POLITE_TAIL or [w.lower() for w in words[-2:]] == ["thank", "you"]):
        del words[-2 if words[-1].lower() == "you" else -1:]
    return " ".join(words)


def _split_negation(clause: str) -> tuple[str, str]:
    """(what to add, what to avoid) in one clause."""
    if match := _DONT.fullmatch(clause):  # "don't add X" → avoid X; "don't change X"/"keep X": img2img keeps X
        return "", _noun(match[1]) if match[1] else ""
    if match := _NO.fullmatch(clause):
        return "", _noun(match[1])
    if match := _NO_INLINE.search(clause):
        return clause[: match.start()], _noun(match[1])
    return clause, ""


def _removed(regions: list[str]) -> tuple[str, ...]:
    """What removals remove, as negative words; not "background": removing it leaves a plain one."""
    return tuple(noun for noun in map(_noun, regions) if noun.lower() != "background")


def _noun(phrase: str) -> str:
    """'the hat' → 'hat', 'it dark' → 'dark': the words for a content or negative prompt."""
    words = phrase.split(" ")
    return " ".join(words[next((i for i, w in enumerate(words[:-1]) if w.lower() not in _LEADING), len(words) - 1):])


def _object(phrase: str) -> str:
    """What a verb acts on: none, whole (the picture), global (an attribute), person, definite or bare."""
    words = phrase.lower().split(" ")
    head = words[1:] if words[0] in _DETS else words
    head = head[1:] if head and head[0] in ("overall", "general", "whole", "entire") else head
    if not phrase or _WHOLE.fullmatch(phrase):
        return "whole" if phrase else "none"
    if len(words) == 1 and words[0] in _PERSONS:
        return "person"
    if head and head[0] in _GLOBAL and head[1:2] != ["of"]:  # not "the colour of X"
        return "global"
    return ("definite" if head else "whole") if words[0] in _DETS else "bare"


def _stopped(phrase: str, stop: frozenset[str] = _NP_STOP) -> bool:
    return any(word in stop for word in phrase.lower().split(" "))


def _adjective(text: str) -> tuple[str, bool]:
    """'look like a wolf' → ('a wolf', True: a thing); 'look old' → ('old', False)."""
    cut = _LIKE.match(text) or _LOOKS.match(text)
    return (text[cut.end():] if cut else text), bool(cut and cut.re is _LIKE)


def _classify(clause: str) -> _Read:
    match = _VERB.match(clause)
    kind = _VERBS.get(match[1].lower()) if match else None
    if match is None or kind is None:
        return _Read(Mode.IMAGE, clause, clause, verb=False)
    verb, rest = match[1].lower(), (match[2] or "").strip()
    if kind == "remove":
        target = _IN_PICTURE.sub("", rest)
        region = target if _object(target) in ("definite", "bare") else None  # not "it", "the lighting", "him"
        return _Read(Mode.INPAINT if region else Mode.INSTRUCT, clause, region=region, content=None)
    if kind == "replace":
        cut = _WITH.search(rest)
        target, value = (rest[: cut.start()], rest[cut.end():]) if cut else (rest, "")
        return _change(clause, _IN_PICTURE.sub("", target), value, loose=True)
    if verb in _TRANSFORMS and (cut := (_INTO if verb == "make" else _TO).search(rest)):
        target, value = _IN_PICTURE.sub("", rest[: cut.start()]), _adjective(rest[cut.end():])[0]
        return _change(clause, target, value, into="into" in cut[0].lower())
    if verb == "change":
        return _change(clause, _IN_PICTURE.sub("", rest), "")
    if kind in ("make", "give"):
        return _make(clause, rest) if kind == "make" else _give(clause, rest)
    if kind == "add":  # "add a red scarf" → conditioning on "with a red scarf"
        return _Read(Mode.IMAGE, clause, f"with {rest}" if rest else clause)
    whole = _WHOLE_HEAD.match(rest)
    return _Read(Mode.INSTRUCT, clause, rest[whole.end():] if whole else rest)


def _change(clause: str, target: str, value: str, *, into: bool = False, loose: bool = False) -> _Read:
    """target → value: INPAINT a clean definite phrase (replace: any phrase), else INSTRUCT."""
    kind = _object(target)
    if kind == "global":
        return _Read(Mode.INSTRUCT, clause, f"{value} {_noun(target)}" if value else "")
    if kind == "definite" or (loose and kind == "bare"):
        colour = _COLOR_OF.fullmatch(target)
        target = colour[1] if colour else target
        if value and (colour or all(w in _COLORS for w in value.lower().split(" "))):  # "to red" → "red car"
            value = f"{value} {_noun(target)}"
        if loose or not _stopped(_noun(target)):
            return _Read(Mode.INPAINT, clause, value, region=target, content=value)
    return _Read(Mode.INSTRUCT, clause, f"as {value}" if into and value else value)


def _make(clause: str, rest: str) -> _Read:
    """make/turn/paint <object> <adjective>: "make the car red" → region "the car", content "red car"."""
    words, low, whole = rest.split(" "), rest.lower().split(" "), _WHOLE_HEAD.match(rest)
    if whole or len(low) < 3 or low[0] not in _DETS or _LOOKS.match(rest, len(words[0]) + 1):
        value = rest[whole.end():] if whole else " ".join(words[1:]) if low[0] in _DETS | _PERSONS else rest
        value, thing = _adjective(value)
        return _Read(Mode.INSTRUCT, clause, f"as {value}" if thing and value else value)
    split = next((i for i in range(2, len(low)) if low[i] in _ADJ_START), len(low) - 1)
    target = " ".join(words[:split]).removesuffix(" in")  # "paint the wall in blue"
    adjective, thing = _adjective(" ".join(words[split:]))
    kind = _object(target)
    if kind in ("global", "whole"):
        return _Read(Mode.INSTRUCT, clause, adjective if thing or kind == "whole" else f"{adjective} {_noun(target)}")
    target = colour[1] if (colour := _COLOR_OF.fullmatch(target)) else target
    noun = _noun(target)
    if kind != "definite" or _stopped(noun) or not adjective or (not thing and _stopped(adjective, _ADJ_STOP)):
        return _Read(Mode.INSTRUCT, clause, clause)
    if not thing and _stopped(adjective, _COLORS):  # "make the red car blue": "blue car", not "blue red car"
        noun = " ".join(w for w in noun.split(" ") if w.lower() not in _COLORS) or noun
    content = adjective if thing else f"{adjective} {noun}"
    return _Read(Mode.INPAINT, clause, content, region=target, content=content)


def _give(clause: str, rest: str) -> _Read:
    """give <object> <thing>: "give the man a beard" → region "the man", content "man with a beard"."""
    words, low, whole = rest.split(" "), rest.lower().split(" "), _WHOLE_HEAD.match(rest)
    if whole or len(low) < 3 or low[0] not in _DETS or low[1] in _ARTICLES:
        thing = rest[whole.end():] if whole else " ".join(words[1:]) if low[0] in _PERSONS else rest
        return _Read(Mode.INSTRUCT, clause, f"with {thing}" if thing else "")
    split = next((i for i in range(2, len(low)) if low[i] in _ARTICLES), 2)
    target, thing = " ".join(words[:split]), " ".join(words[split:])
    kind = _object(target)
    if kind == "definite" and not _stopped(_noun(target)):
        content = f"{_noun(target)} with {thing}"
        return _Read(Mode.INPAINT, clause, content, region=target, content=content)
    return _Read(Mode.INSTRUCT, clause, f"with {thing}" if kind in ("whole", "global") else clause)
