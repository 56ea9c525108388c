"""The one error type for bad user input.  The CLI prints its message on one line and exits 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, named: the field, the value given, and the valid choices or the fix."""

    def __init__(self, field: str, value=None, choices=None, hint: str | None = None):
        self.field, self.value, self.choices, self.hint = field, value, choices, hint
        msg = f"invalid {field}: {value!r}"
        if choices is not None:
            choices = list(choices)
            shown = ", ".join(map(str, choices[:60])) + (" ..." if len(choices) > 60 else "")
            msg += f"; valid choices: {shown}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
