"""An adjustment to the Daphne server (Twisted underneath) that serves :mod:`config.asgi`."""


def leave_request_bodies_to_django() -> None:
    """Stop Twisted from parsing the form and multipart bodies of POST requests itself.

    ``twisted.web.http.Request`` parses every ``multipart/form-data`` and urlencoded POST body
    into ``request.args``, which Daphne never reads. That costs a second copy of each upload in
    memory, and a malformed multipart body (no boundary, say) is answered by Twisted with an empty
    400 and a closed connection, before Django could answer it in the API's error shape (issue 20,
    item 9). Twisted has a switch for this, ``Request(parsePOSTFormSubmission=False)``, but Daphne
    creates its requests without it; a property that always reads False has the same effect.
    Idempotent; does nothing when Daphne is not installed.
    """
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:
        return
    WebRequest._parsePOSTFormSubmission = property(lambda self: False, lambda self, value: None)
