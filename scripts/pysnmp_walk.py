"""A full bulk walk with pysnmp, printing one OID a line (rdm bench snmp's baseline)."""
import asyncio
import sys

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData, ContextData, ObjectIdentity, ObjectType, SnmpEngine,
    UdpTransportTarget, bulk_walk_cmd,
)


async def main(host: str, port: int, reps: int) -> None:
    engine = SnmpEngine()
    target = await UdpTransportTarget.create((host, port), timeout=2, retries=1)
    async for err, status, _index, varbinds in bulk_walk_cmd(
        engine, CommunityData("public"), target, ContextData(), 0, reps,
        ObjectType(ObjectIdentity("1.3.6.1")), lexicographicMode=False,
    ):
        if err or status:
            sys.exit(f"pysnmp walk failed: {err or status.prettyPrint()}")
        for name, _value in varbinds:
            print(name)


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
