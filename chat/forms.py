"""Forms of the chat UI's server-rendered pages."""

from django import forms

from agents.services import MEMORY_NOTE_MAX_CHARS


class MemoryNoteForm(forms.Form):
    """A note the user asks to be remembered, in their own words (``/settings/``)."""

    content = forms.CharField(
        label="Something to remember",
        max_length=MEMORY_NOTE_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "I prefer metric units."}),
        help_text=f"In your own words, up to {MEMORY_NOTE_MAX_CHARS:,} characters. It is recalled in your "
        "conversations when it is close to what you ask, while memory is on.",
    )


class MemoryToggleForm(forms.Form):
    """Memory on or off: the button pressed sends ``memory_enabled=on`` or ``off``."""

    memory_enabled = forms.ChoiceField(choices=[("on", "on"), ("off", "off")])
