"""A sealdb client written from the .proto files alone, in another language than the server.

Usage: client.py SEQUENCER_ADDR PROTO_DIR

It compiles the .proto files with grpcio-tools, asks the admin service for the layout, and
then, through the network only: puts two keys with the built-in `kv.put` (routed by the
server: no participants sent), reads them back from their shard at a fresh timestamp, scans
them, runs a `list_append` over two lists and reads its output. Everything it needs to know
(timestamps, client ids, routing, the procedures' encodings, status codes) is in the .proto
comments. Exits 0 and prints "wire client: ok" on success.
"""

import os
import sys
import tempfile
import time


def main():
    addr, proto_dir = sys.argv[1], sys.argv[2]
    import grpc
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="sealdb-wire-")
    files = [f"sealdb/v1/{n}.proto" for n in ["common", "txn", "builtin", "sequencer", "shard", "admin"]]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out)
    from sealdb.v1 import admin_pb2, admin_pb2_grpc, builtin_pb2, common_pb2, sequencer_pb2
    from sealdb.v1 import sequencer_pb2_grpc, shard_pb2, shard_pb2_grpc, txn_pb2

    def hlc():
        # NTP64: seconds since the Unix epoch in the upper 32 bits, the fraction below.
        ns = time.time_ns()
        return ((ns // 10**9) << 32) | (((ns % 10**9) << 32) // 10**9)

    status = admin_pb2_grpc.AdminStub(grpc.insecure_channel(addr)).ClusterStatus(
        admin_pb2.ClusterStatusRequest(hlc=hlc()), timeout=10)
    splits = list(status.splits)
    shards = [shard_pb2_grpc.ShardStub(grpc.insecure_channel(a)) for a in status.shard_addrs]
    sequencer = sequencer_pb2_grpc.SequencerStub(grpc.insecure_channel(addr))

    def shard_of(key):
        # Shard i owns keys from split i-1 up to split i.
        return sum(1 for s in splits if s <= key)

    def point(key):
        return common_pb2.KeyRange(start=key, end=key + b"\x00")

    def call(name, args, keys):
        entry = txn_pb2.Entry(procedure=txn_pb2.ProcedureCall(
            name=name, args=args, ranges=[point(k) for k in keys]))
        receipt = sequencer.Submit(sequencer_pb2.SubmitRequest(
            hlc=hlc(), payload=entry.SerializeToString(), client_id=os.urandom(16)), timeout=10)
        # The outcome comes from the entry's lowest participant, after commit-wait.
        lowest = min(shard_of(k) for k in keys)
        answer = shards[lowest].AwaitOutcome(
            shard_pb2.AwaitOutcomeRequest(hlc=hlc(), txn=receipt.txn), timeout=10)
        result = answer.outcome.WhichOneof("result")
        if result != "committed":
            raise SystemExit(f"{name}: {result}: {answer.outcome}")
        return answer.outcome.committed.output

    def put(key, value):
        out = call("kv.put", builtin_pb2.KvPutArgs(key=key, value=value).SerializeToString(), [key])
        builtin_pb2.Empty.FromString(out)

    def get(key):
        r = shards[shard_of(key)].Get(
            shard_pb2.GetRequest(hlc=hlc(), key=key, read_ts=hlc()), timeout=10)
        return r.found.value if r.HasField("found") else None

    put(b"py/one", b"1")
    put(b"py/two", b"2")
    assert get(b"py/one") == b"1", get(b"py/one")
    assert get(b"py/two") == b"2", get(b"py/two")
    assert get(b"py/none") is None
    assert shard_of(b"py/one") == shard_of(b"py/two")
    rows = shards[shard_of(b"py/")].Scan(shard_pb2.ScanRequest(
        hlc=hlc(), range=common_pb2.KeyRange(start=b"py/", end=b"py0"), read_ts=hlc(),
        limit=10), timeout=10).rows
    assert [(r.key, r.value) for r in rows] == [(b"py/one", b"1"), (b"py/two", b"2")], rows

    def list_key(k):
        return ((k * 0x9E3779B97F4A7C15) % 2**64).to_bytes(8, "big") + b"/list"

    op = builtin_pb2.ListOp
    args = builtin_pb2.ListAppendArgs(ops=[
        op(key=1, append=10), op(key=2, append=20), op(key=1, append=11),
        op(key=1, read=True), op(key=2, read=True), op(key=3, read=True)])
    keys = [list_key(1), list_key(2), list_key(3)]
    output = builtin_pb2.ListAppendOutput.FromString(
        call("list_append", args.SerializeToString(), keys))
    assert [list(r.values) for r in output.reads] == [[10, 11], [20], []], output
    stored = builtin_pb2.List.FromString(get(list_key(1)))
    assert list(stored.values) == [10, 11], stored
    # A refused request is typed: a key over 10 KiB, in a Get.
    try:
        shards[0].Get(shard_pb2.GetRequest(hlc=hlc(), key=b"\x00" * 20000, read_ts=hlc()))
        raise SystemExit("an oversize key was not refused")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        details = dict(e.trailing_metadata()).get("grpc-status-details-bin")
        refusal = common_pb2.Refusal.FromString(details)
        assert refusal.kind == common_pb2.REFUSAL_KIND_TOO_LARGE, refusal
    print("wire client: ok")


if __name__ == "__main__":
    main()
