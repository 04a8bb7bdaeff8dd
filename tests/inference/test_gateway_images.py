"""Images on /v1/chat/completions (OpenAI ``image_url`` content parts), with the official ``openai`` client
against a live Daphne; the model is tests/servers.py's scripted OpenAI-compatible server, which records
what it received. Image URLs are fetched only when allowed, and never from private addresses."""

import openai
import pytest

from accounts.services import api_key_create
from conftest import make_user
from inference.images import ImageUrlRefused, image_fetch
from inference.models import ModelConfig, Provider, TextOnlyImages
from tests.factories import CAMERA_MODEL, data_url, data_url_bytes, image_parts, jpeg_with_exif, png_bytes
from tests.servers import FileServer, ScriptedServer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api_key(db) -> str:
    _, key = api_key_create(user=make_user("alice"), name="image tests")
    return key


def openai_client(daphne_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=daphne_url + "/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture
def client(daphne_url, api_key) -> openai.OpenAI:
    return openai_client(daphne_url, api_key)


def remote(server: ScriptedServer, slug="eyes", **fields) -> ModelConfig:
    return ModelConfig.objects.create(
        slug=slug,
        display_name=slug.title(),
        provider=Provider.OPENAI_COMPATIBLE,
        model="scripted",
        base_url=server.base_url,
        max_retries=0,
        **{"cache_policy": "never", "supports_vision": True, **fields},
    )


def ask(url: str, text: str = "What is in this picture?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            ],
        }
    ]


def test_a_data_url_image_reaches_a_vision_model_cleaned(client):
    photo = jpeg_with_exif(40, 20)
    with ScriptedServer(["ok"]) as server:
        remote(server)
        completion = client.chat.completions.create(model="eyes", messages=ask(data_url(photo, "image/jpeg")))
        streamed = list(client.chat.completions.create(model="eyes", messages=ask(data_url(photo)), stream=True))
    assert completion.choices[0].message.content == "Hello there!"
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Hello there!"
    for request in server.requests:
        [[part]] = image_parts(request)
        received = data_url_bytes(part["image_url"]["url"])
        assert part["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert received.startswith(b"\xff\xd8") and CAMERA_MODEL.encode() not in received
        assert request["messages"][-1]["content"][0] == {"type": "text", "text": "What is in this picture?"}


def test_models_list_says_which_models_see_images(client):
    with ScriptedServer(["ok"]) as server:
        remote(server)
        capabilities = {m.id: m.model_extra["capabilities"]["vision"] for m in client.models.list().data}
    assert capabilities == {"eyes": True}


def test_a_text_only_model_refuses_images_with_400(client):
    with ScriptedServer(["ok"]) as server:
        remote(server, slug="blind", supports_vision=False)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="blind", messages=ask(data_url(png_bytes())))
    assert refused.value.code == "model_not_vision_capable"
    assert server.requests == []


def test_a_text_only_model_set_to_omit_gets_a_note(client):
    with ScriptedServer(["ok"]) as server:
        remote(server, slug="blind", supports_vision=False, text_only_images=TextOnlyImages.OMIT)
        client.chat.completions.create(model="blind", messages=ask(data_url(png_bytes())))
    assert server.requests[-1]["messages"][-1]["content"] == (
        "What is in this picture?\n[image omitted: the model blind cannot see images]"
    )


def test_bad_images_are_openai_shaped_errors(client):
    with ScriptedServer(["ok"]) as server:
        remote(server)
        with pytest.raises(openai.APIStatusError) as wrong_type:
            client.chat.completions.create(model="eyes", messages=ask(data_url(b"not an image")))
        with pytest.raises(openai.BadRequestError) as not_fetched:
            client.chat.completions.create(model="eyes", messages=ask("https://example.com/cat.png"))
    assert wrong_type.value.status_code == 415
    assert wrong_type.value.code == "unsupported_image_type"
    assert wrong_type.value.body["param"] == "messages[0].content[1].image_url"
    assert not_fetched.value.code == "image_url_refused"
    assert "IMAGE_URL_FETCH" in not_fetched.value.message
    assert server.requests == []


def test_images_only_in_user_messages(client):
    with ScriptedServer(["ok"]) as server:
        remote(server)
        messages = [
            {"role": "system", "content": ask(data_url(png_bytes()))[0]["content"]},
            *ask(data_url(png_bytes())),
        ]
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="eyes", messages=messages)
    assert refused.value.body["param"] == "messages[0].content"


# Image URLs. Loopback is a private address: refused unless an operator allows its network.


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "10.1.2.3", "169.254.169.254"])
def test_private_and_loopback_addresses_are_never_fetched(settings, host):
    settings.IMAGE_URL_FETCH = True
    with FileServer({"/cat.png": ("image/png", png_bytes())}) as files:
        port = files.base_url.rsplit(":", 1)[1]
        with pytest.raises(ImageUrlRefused, match="private, loopback or reserved"):
            image_fetch(f"http://{host}:{port}/cat.png")
        assert files.requests == []


def test_a_redirect_to_a_private_address_is_refused(settings):
    settings.IMAGE_URL_FETCH = True
    settings.IMAGE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with FileServer({}, redirects={"/cat.png": "http://10.0.0.7/cat.png"}) as files:
        with pytest.raises(ImageUrlRefused, match="private"):
            image_fetch(files.base_url + "/cat.png")
    assert files.requests == ["/cat.png"]


def test_fetching_stops_past_the_size_limit(settings):
    settings.IMAGE_URL_FETCH = True
    settings.IMAGE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    settings.IMAGE_MAX_BYTES = 100
    with FileServer({"/big.png": ("image/png", png_bytes(300, 300) + b"\0" * 200)}) as files:
        with pytest.raises(Exception, match="limit") as refused:
            image_fetch(files.base_url + "/big.png")
    assert refused.value.code == "image_too_large"


@pytest.fixture
def fetching_client(settings, request, api_key) -> openai.OpenAI:
    """A client of a Daphne started with image URL fetching on and loopback allowed (an operator's
    internal image host): settings set before the server forks are its own."""
    settings.IMAGE_URL_FETCH = True
    settings.IMAGE_URL_FETCH_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    return openai_client(request.getfixturevalue("daphne_url"), api_key)


def test_an_allowed_image_url_is_fetched_and_sent_as_data(fetching_client):
    image = png_bytes(12, 34)
    with FileServer({"/cat.png": ("image/png", image)}) as files, ScriptedServer(["ok"]) as server:
        remote(server)
        completion = fetching_client.chat.completions.create(model="eyes", messages=ask(files.base_url + "/cat.png"))
        with pytest.raises(openai.BadRequestError) as missing:
            fetching_client.chat.completions.create(model="eyes", messages=ask(files.base_url + "/missing.png"))
    assert completion.choices[0].message.content == "Hello there!"
    [[part]] = image_parts(server.requests[0])
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    assert data_url_bytes(part["image_url"]["url"]) == image  # a plain PNG re-encodes to the same bytes here
    assert files.requests == ["/cat.png", "/missing.png"]
    assert "HTTP 404" in missing.value.message
