"""The baseline of the benchmark: the same processor written the established way, with Powertools
for AWS Lambda (Python): BatchProcessor (partial batch responses) + idempotent_function with its
DynamoDB persistence layer, on the same table shape, calling the same provider simulator with an
Idempotency-Key.

Run by `cargo xtask bench`; not part of the product.

    python powertools_processor.py --messages FILE   run every batch, print JSON statistics
    python powertools_processor.py --init-only       print "ready" once the handler is importable
"""

import argparse
import hashlib
import json
import os
import resource
import sys
import time
import urllib.request

import boto3
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

COUNTS = {}


def _count(event_name, **_kwargs):
    operation = event_name.rsplit(".", 1)[-1]
    COUNTS[operation] = COUNTS.get(operation, 0) + 1


SESSION = boto3.session.Session()
SESSION.events.register("before-send.dynamodb", _count)
PERSISTENCE = DynamoDBPersistenceLayer(
    table_name=os.environ["IDEMPOTENCY_TABLE"],
    key_attr="pk",
    expiry_attr="expires_at",
    in_progress_expiry_attr="lease_until_ms",
    status_attr="status",
    data_attr="result",
    validation_key_attr="payload_hash",
    boto3_session=SESSION,
)
CONFIG = IdempotencyConfig(
    event_key_jmespath="[scope, idempotency_key]",
    payload_validation_jmespath="payment",
    expires_after_seconds=7 * 24 * 3600,
)
PROVIDER = os.environ["PROVIDER_BASE_URL"].rstrip("/") + "/v1/charges"
PROCESSOR = BatchProcessor(event_type=EventType.SQS)


@idempotent_function(data_keyword_argument="message", persistence_store=PERSISTENCE, config=CONFIG)
def charge(message):
    payment = message["payment"]
    key = hashlib.sha256(f"{message['scope']}#{message['idempotency_key']}".encode()).hexdigest()
    body = json.dumps(
        {
            "amount": payment["amount"],
            "currency": payment["currency"].lower(),
            "payment_method": payment["payment_method"],
            "description": payment["merchant_reference"],
            "metadata": payment.get("metadata", {}),
        }
    ).encode()
    request = urllib.request.Request(
        PROVIDER, data=body, headers={"Idempotency-Key": key, "Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        charged = json.loads(response.read())
    return {"charge_id": charged["id"], "amount": charged["amount"], "currency": charged["currency"].upper()}


def record_handler(record):
    return charge(message=json.loads(record.body))


class Context:
    """The little of LambdaContext that Powertools reads."""

    function_name = "powertools-processor"
    aws_request_id = "bench"

    def __init__(self, deadline_s):
        self._deadline = deadline_s

    def get_remaining_time_in_millis(self):
        return int((self._deadline - time.time()) * 1000)


def handler(event, context):
    CONFIG.register_lambda_context(context)
    return process_partial_response(event=event, record_handler=record_handler, processor=PROCESSOR, context=context)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_kib():
    """The peak resident memory of this process's own address space (VmHWM). Not ru_maxrss: Linux
    carries the spawning process's peak into it across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages")
    parser.add_argument("--init-only", action="store_true")
    args = parser.parse_args()
    if args.init_only:
        print("ready", flush=True)
        return
    with open(args.messages) as f:
        batches = json.load(f)
    durations, failures, first_batch_cpu = [], 0, 0.0
    cpu_before = cpu_seconds()
    for i, batch in enumerate(batches):
        if i == 1:
            # The first batch pays the one-time set-up (boto3's clients, connections): counted
            # apart, as cold start is, so that the CPU per message is the steady state's.
            first_batch_cpu = cpu_seconds() - cpu_before
            cpu_before = cpu_seconds()
        event = {"Records": batch}
        started = time.perf_counter()
        response = handler(event, Context(time.time() + 60))
        durations.append((time.perf_counter() - started) * 1000)
        failures += len(response["batchItemFailures"])
        if (i + 1) % 10 == 0:
            print(f"  {i + 1} of {len(batches)} batches", file=sys.stderr, flush=True)
    cpu = cpu_seconds() - cpu_before
    print(
        json.dumps(
            {
                "batch_ms": durations,
                "messages": sum(len(b) for b in batches),
                "cpu_messages": sum(len(b) for b in batches[1:]),
                "failures": failures,
                "dynamodb_requests": COUNTS,
                "first_batch_cpu_s": first_batch_cpu,
                "cpu_s": cpu,
                "peak_rss_kib": peak_rss_kib(),
            }
        )
    )


if __name__ == "__main__":
    main()
