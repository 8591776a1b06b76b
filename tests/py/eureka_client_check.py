"""Drives py-eureka-client (unchanged, from PyPI) against a Keel registry.

Registers PY-SVC, heartbeats every second, discovers RUST-SVC (which the Rust test
registered) through the client's own full fetch and delta (XML), prints what it saw as
JSON lines, then stops, which deregisters.
"""
import asyncio
import json
import sys

from py_eureka_client import eureka_basic, eureka_client


def say(**kw):
    print(json.dumps(kw), flush=True)


async def main(server: str, hold_secs: float) -> int:
    client = await eureka_client.init_async(
        eureka_server=server,
        app_name="py-svc",
        instance_id="py-svc-1",
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        instance_port=9099,
        renewal_interval_in_secs=1,
        duration_in_secs=5,
        metadata={"lang": "python"},
    )
    say(step="registered")
    await asyncio.sleep(hold_secs)

    apps = await eureka_basic.get_applications(server)
    names = sorted(a.name for a in apps.applications)
    rust = apps.get_application("RUST-SVC")
    say(step="full-fetch", apps=names, hashcode=apps.appsHashcode,
        rust_instances=[(i.instanceId, i.ipAddr, i.port.port, i.status) for i in rust.instances],
        rust_metadata=rust.instances[0].metadata if rust.instances else {})

    delta = await eureka_basic.get_delta(server)
    say(step="delta", hashcode=delta.appsHashcode,
        apps=sorted(a.name for a in delta.applications))

    mine = await eureka_basic.get_app_instance(server, "PY-SVC", "py-svc-1")
    say(step="self", status=mine.status, renewal=mine.leaseInfo.lastRenewalTimestamp,
        registration=mine.leaseInfo.registrationTimestamp, metadata=mine.metadata)

    # The client's own cached registry, fetched on start.
    cached = client.applications
    say(step="client-cache", apps=sorted(a.name for a in cached.applications) if cached else [])

    await eureka_client.stop_async()
    say(step="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)))
