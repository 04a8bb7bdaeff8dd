"""Forms of the chat UI's server-rendered pages."""

from django import forms

from agents.services import MEMORY_NOTE_MAX_CHARS


class FirstMessageForm(forms.Form):
    """The home composer's post: the first message of a new conversation and the model to answer it.

    ``content`` is checked by :func:`chat.services.message_validate` (empty, too long), as in a
    conversation; the form only refuses what cannot be stored at all (a NUL character). ``model``
    is a slug, empty for the default model.
    """

    content = forms.CharField(required=False, strip=False)
    model = forms.SlugField(required=False)

    def error_detail(self) -> str:
        """Return the form's errors as one sentence per error, for the page."""
        return " ".join(str(message) for messages in self.errors.values() for message in messages)


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
