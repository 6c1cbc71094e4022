"""Connect to an imgate node, join a room and print the pushes that arrive.

    TOKEN=$(.venv/bin/imgate token --user 42 --data-dir .data)
    KEY=$(.venv/bin/imgate apikey create --scope push --data-dir .data)
    .venv/bin/python examples/client.py --token "$TOKEN"
    curl -H "Authorization: Bearer $KEY" -d 'hello' 'http://127.0.0.1:3111/goim/push/room?operation=1000&type=live&room=1000'
"""

import argparse
import asyncio

import uvloop

from imgate import client


async def main(args):
    conn = await client.connect(args.url, mid=args.user, room_id=args.room, token=args.token)
    print(f"authenticated as user {args.user}; room {args.room} has {await conn.heartbeat()} online", flush=True)
    received = 0
    async for push in conn:  # op-9 batches arrive unpacked, one frame per push
        print(f"push op={push.op}: {push.body.decode(errors='replace')}", flush=True)
        received += 1
        if args.count and received >= args.count:
            break
    await conn.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:3102/sub", help="ws://HOST:PORT/sub or tcp://HOST:PORT")
    p.add_argument("--user", type=int, default=42)
    p.add_argument("--room", default="live://1000")
    p.add_argument("--token", default="", help="JWT from `imgate token --user ID` (omit with --auth none)")
    p.add_argument("--count", type=int, default=0, help="exit after this many pushes (0: run until closed)")
    uvloop.run(main(p.parse_args()))
