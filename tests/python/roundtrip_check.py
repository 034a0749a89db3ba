"""Independent oracle for whittle's lossless round trip.

Usage: python roundtrip_check.py PAIRS.txt

Each line of PAIRS.txt is `ORIGINAL<TAB>REENCODED`. A pair passes when the two
files decode to equal ModelProtos (external data is compared by reference, not
loaded) and the re-encoded model passes onnx.checker whenever the original does.
Prints one line per failing pair, then `roundtrip: N passed, M failed`; exits 1
when any pair failed.
"""

import sys

import onnx


def equal(a, b):
    """Protobuf equality, or equal deterministic bytes: some protobuf backends hold NaN != NaN."""
    return a == b or a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def same(x, y):
    """Scalar equality that takes NaN as equal to NaN."""
    return x == y or (x != x and y != y)


def describe(x, y):
    """Shows two differing scalars, or where two byte strings part."""
    if isinstance(x, bytes):
        at = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        return f"{len(x)} vs {len(y)} bytes, first difference at byte {at}"
    return f"{x!r:.80} vs {y!r:.80}"


def first_difference(a, b, path="model"):
    """Names the first field, in declaration order, where two messages differ, or None."""
    set_a, set_b = dict(a.ListFields()), dict(b.ListFields())
    for field in a.DESCRIPTOR.fields:
        where = f"{path}.{field.name}"
        if field.is_repeated:
            x, y = set_a.get(field, []), set_b.get(field, [])
        elif (field in set_a) != (field in set_b):
            return f"{where}: set only in the {'original' if field in set_a else 're-encoded'}"
        elif field in set_a:
            x, y = [set_a[field]], [set_b[field]]
        else:
            continue
        for i, (p, q) in enumerate(zip(x, y)):
            item = f"{where}[{i}]" if field.is_repeated else where
            if field.type == field.TYPE_MESSAGE:
                found = first_difference(p, q, item)
                if found:
                    return found
            elif not same(p, q):
                return f"{item}: {describe(p, q)}"
        if len(x) != len(y):
            return f"{where}: {len(x)} vs {len(y)} entries"
    return None


def checker_error(path):
    """Returns the checker's complaint about the model at `path`, or None.

    The checker gets the path so that it resolves external data next to the model.
    """
    try:
        onnx.checker.check_model(path)
    except Exception as error:  # The checker raises several exception types.
        return str(error).strip().splitlines()[0]
    return None


def check_pair(original, reencoded):
    """Returns why the pair fails, or None when it passes."""
    try:
        a = onnx.load(original, load_external_data=False)
        b = onnx.load(reencoded, load_external_data=False)
    except Exception as error:
        return f"load: {error}"
    if not equal(a, b):
        found = first_difference(a, b) or "no known field differs, so unknown fields do"
        return f"not equal: {found}"
    if checker_error(original) is None:
        error = checker_error(reencoded)
        if error is not None:
            return f"checker: the original passes but the re-encoded fails: {error}"
    return None


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python roundtrip_check.py PAIRS.txt")
    passed = failed = 0
    with open(sys.argv[1], encoding="utf-8") as pairs:
        for number, line in enumerate(pairs, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2:
                sys.exit(f"{sys.argv[1]}:{number}: expected ORIGINAL<TAB>REENCODED")
            original, reencoded = fields
            problem = check_pair(original, reencoded)
            if problem is None:
                passed += 1
            else:
                failed += 1
                print(f"FAIL {original} -> {reencoded}: {problem}")
    print(f"roundtrip: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
