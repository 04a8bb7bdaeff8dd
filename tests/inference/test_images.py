"""inference.images on its own: fitting images to a model's caps, and what a model without vision gets."""

import io
import os

import pytest
from PIL import Image

from inference.images import ModelImageError, ModelNotVisionCapable, image_fit, messages_for_model
from inference.models import ModelConfig, Provider, TextOnlyImages
from inference.providers import GenerationParams, ModelUnavailable
from inference.providers.llama_cpp import LlamaCppProvider
from tests.factories import data_url, data_url_bytes, png_bytes
from tests.servers import BUNDLED


def noisy_png(width: int, height: int) -> bytes:
    """A PNG that does not compress (random pixels): many bytes for its size."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, format="PNG")
    return out.getvalue()


def test_an_image_within_the_caps_is_sent_as_it_is():
    data = png_bytes(100, 50)
    assert image_fit(data=data, content_type="image/png", max_side=100, max_bytes=len(data)) == (data, "image/png")


def test_an_image_over_the_byte_cap_is_re_encoded_as_jpeg_at_its_size():
    data = noisy_png(200, 100)
    fitted, content_type = image_fit(data=data, content_type="image/png", max_side=4096, max_bytes=len(data) // 2)
    assert content_type == "image/jpeg" and len(fitted) <= len(data) // 2
    assert Image.open(io.BytesIO(fitted)).size == (200, 100)  # not shrunk: only re-encoded


def test_an_image_that_cannot_fit_the_byte_cap_is_refused():
    with pytest.raises(Exception, match="takes images of") as refused:
        image_fit(data=noisy_png(200, 200), content_type="image/png", max_side=4096, max_bytes=1024)
    assert refused.value.code == "image_too_large"


def model(**fields) -> ModelConfig:
    return ModelConfig(slug="m", display_name="M", provider=Provider.OPENAI_COMPATIBLE, model="m", **fields)


QUESTION = [{"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {}}]}]


def question(data: bytes) -> list[dict]:
    return [
        {
            **QUESTION[0],
            "content": [QUESTION[0]["content"][0], {"type": "image_url", "image_url": {"url": data_url(data)}}],
        }
    ]


def test_messages_for_each_kind_of_model(settings):
    messages = question(png_bytes(300, 150))
    fitted = messages_for_model(config=model(supports_vision=True, image_max_pixels=100), messages=messages)
    image = Image.open(io.BytesIO(data_url_bytes(fitted[0]["content"][1]["image_url"]["url"])))
    assert image.size == (100, 50)
    omitted = messages_for_model(config=model(text_only_images=TextOnlyImages.OMIT), messages=messages)
    assert omitted == [{"role": "user", "content": "What?\n[image omitted: the model m cannot see images]"}]
    with pytest.raises(ModelNotVisionCapable):
        messages_for_model(config=model(), messages=messages)
    with pytest.raises(ModelImageError):  # an InferenceError: the turn ends with its code, not "unexpected"
        messages_for_model(
            config=model(supports_vision=True, image_max_bytes=1024), messages=question(noisy_png(300, 300))
        )
    assert messages_for_model(config=model(), messages=[{"role": "user", "content": "Hi"}]) == [
        {"role": "user", "content": "Hi"}
    ]


def test_a_local_model_with_a_missing_projector_is_unavailable():
    with pytest.raises(ModelUnavailable, match="projector"):
        LlamaCppProvider(model=BUNDLED, n_ctx=512, projector="/nonexistent/mmproj.gguf")
    # Without a projector the text model loads as usual; images are refused when they come.
    provider = LlamaCppProvider(model=BUNDLED, n_ctx=512)
    assert provider.key.projector == ""
    with pytest.raises(ModelUnavailable, match="no vision projector"):
        list(provider.stream(question(png_bytes()), GenerationParams(max_tokens=4, temperature=0)))
