"""Forms of the chat pages."""

from django import forms


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
