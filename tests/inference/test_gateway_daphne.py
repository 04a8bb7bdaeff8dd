"""The /v1 gateway served by Daphne, as in production: a streamed answer arrives as it is generated."""

import openai
import pytest

from accounts.models import UsageRecord
from accounts.services import api_key_create
from conftest import make_user
from inference.models import ModelConfig, Provider
from tests.servers import ScriptedServer

pytestmark = pytest.mark.django_db(transaction=True)


def test_streamed_chunks_reach_the_client_while_the_model_is_still_generating(daphne_url):
    _, key = api_key_create(user=make_user(), name="script")
    client = openai.OpenAI(base_url=daphne_url + "/v1", api_key=key, max_retries=0, timeout=60)
    # The upstream sends two words, then goes silent until Parley's idle timeout ends the answer.
    with ScriptedServer(["stall-midway"], stall_seconds=30) as server:
        ModelConfig.objects.create(
            slug="remote",
            display_name="Remote",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
            cache_policy="never",
            idle_timeout=3.0,
            max_retries=0,
        )
        stream = client.chat.completions.create(
            model="remote", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
        received = ""
        for chunk in stream:
            received += chunk.choices[0].delta.content or ""
            if received == "Hello there":
                # The generation has not ended (its usage is recorded when it does): the words came
                # while the model was still working, not in one piece at the end.
                assert not UsageRecord.objects.exists()
                break
        stream.close()
    assert received == "Hello there"
