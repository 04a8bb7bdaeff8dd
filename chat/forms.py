"""Forms of the chat UI's server-rendered pages."""

from django import forms
from django.contrib.auth.models import Group

from agents.services import MEMORY_NOTE_MAX_CHARS

from .models import PromptVisibility
from .services import CUSTOM_INSTRUCTIONS_MAX_CHARS, PROMPT_TEXT_MAX_CHARS


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


class CustomInstructionsForm(forms.Form):
    """The user's custom instructions (``/settings/``): see :func:`chat.services.custom_instructions_set`."""

    about_me = forms.CharField(
        label="About me",
        required=False,
        max_length=CUSTOM_INSTRUCTIONS_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "I am a nurse in Lyon; I read English and French."}),
        help_text="What the model should know about you.",
    )
    how_to_answer = forms.CharField(
        label="How to answer",
        required=False,
        max_length=CUSTOM_INSTRUCTIONS_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Briefly, with metric units."}),
        help_text=f"How you want to be answered. Each box holds up to {CUSTOM_INSTRUCTIONS_MAX_CHARS:,} characters.",
    )
    enabled = forms.BooleanField(label="Use them in my conversations", required=False)


class PromptForm(forms.Form):
    """A prompt for the library (``/settings/``): see :func:`chat.services.prompt_create`."""

    title = forms.CharField(max_length=120)
    text = forms.CharField(
        max_length=PROMPT_TEXT_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "Translate into {{language}}:\n\n{{text}}"}),
        help_text="Write {{name}} where a value is filled in when you insert it (type / in the composer).",
    )
    visibility = forms.ChoiceField(choices=PromptVisibility.choices, initial=PromptVisibility.PRIVATE)
    groups = forms.ModelMultipleChoiceField(
        queryset=Group.objects.none(), required=False, help_text="With visibility “My groups”."
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["groups"].queryset = user.groups.order_by("name")


class ImportForm(forms.Form):
    file = forms.FileField(
        label="Export file",
        help_text="ChatGPT's export (the zip it emails you, or its conversations.json) or a Parley export zip.",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,.json,application/zip,application/json"}),
    )
