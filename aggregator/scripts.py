"""The Lua scripts, as Redis runs them: the shared preludes prepended where a script uses them."""

from __future__ import annotations

from importlib import resources

#: Scripts that use the high-water-mark rule (aggregator/hwm.lua).
_WITH_HWM = frozenset({"apply.lua", "gaps.lua"})


def script(name: str) -> str:
    """The text of ``aggregator/<name>``, with aggregator/hwm.lua before it when it uses it."""
    files = resources.files("aggregator")
    text = files.joinpath(name).read_text()
    if name in _WITH_HWM:
        return files.joinpath("hwm.lua").read_text() + text
    return text
