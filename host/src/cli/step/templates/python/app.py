"""The `{{name}}` step: greets someone and, given a webhook, posts the greeting to it.

`./build.sh` builds it into step.wasm. The bindings (`wit_world`) are generated from
wit/ by componentize-py at build time;
`componentize-py -d wit -w step-python bindings bindings` writes them to bindings/ for an editor.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, secrets
from wit_world.imports.skiff_step_types import (
    Capabilities,
    InputSpec,
    Invocation,
    Manifest,
    OutputSpec,
    Pair,
    StepError_Denied,
    StepError_Failed,
    StepError_InvalidInput,
    StepOutput,
)

import skiff_http


def info(message: str) -> None:
    log.write(log.Level.INFO, message)


class WitWorld(wit_world.WitWorld):
    def describe(self) -> Manifest:
        """What the step takes, returns and asks for: `skiff step inspect` shows it, and a
        pipeline must grant the host and the secret before the step starts."""
        return Manifest(
            name="{{name}}",
            version="0.1.0",
            description="Greets someone, and posts the greeting to a webhook if given one.",
            inputs=[
                InputSpec("who", "Whom to greet", False, "world"),
                InputSpec("webhook", "A URL to POST the greeting to (its host must be granted)", False, None),
            ],
            outputs=[
                OutputSpec("greeting", "The greeting"),
                OutputSpec("status", "The webhook's HTTP status (empty without a webhook)"),
            ],
            capabilities=Capabilities(hosts=["${inputs.webhook}"], secrets=["TOKEN"], process=False),
        )

    def run(self, invocation: Invocation) -> StepOutput:
        """Runs the step once: returns its outputs, or raises `Err(StepError_...)`."""
        # Only `Err(StepError_...)` may leave `run`: anything else raised would end the step as
        # a crash, so it is reported as a failure.
        try:
            return greet(invocation)
        except Err as e:
            if isinstance(e.value, (StepError_InvalidInput, StepError_Failed, StepError_Denied)):
                raise
            raise Err(StepError_Failed(repr(e.value))) from None
        except skiff_http.HttpDenied as e:
            raise Err(StepError_Denied(str(e))) from None
        except skiff_http.HttpError as e:
            raise Err(StepError_Failed(str(e))) from None
        except Exception as e:
            raise Err(StepError_Failed(repr(e))) from None


def greet(invocation: Invocation) -> StepOutput:
    inputs = {pair.key: pair.value for pair in invocation.inputs}
    who = inputs.get("who") or "world"
    greeting = f"hello, {who}"
    info(greeting)
    status = ""
    webhook = inputs.get("webhook")
    if webhook:
        headers = {"content-type": "application/json"}
        # A secret is only ever handed to the step that was granted it; the host masks it in
        # every log line.
        token = secrets.get("TOKEN")
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        body = json.dumps({"text": greeting, "from": "{{name}}"}).encode()
        response = skiff_http.post(webhook, body, headers)
        info(f"the webhook answered {response.status}: {response.text()}")
        if response.status >= 400:
            raise Err(StepError_Failed(f"the webhook answered {response.status}"))
        status = str(response.status)
    log.summary(f"Greeted **{who}**.")
    return StepOutput([Pair("greeting", greeting), Pair("status", status)])
