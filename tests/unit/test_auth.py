"""imgate.auth: goim's auth body, NoAuth, JwtAuth, token minting."""
import json
import time

import jwt
import pytest

from imgate.auth import (
    MAX_AUTH_BODY,
    AuthError,
    Authenticator,
    Identity,
    JwtAuth,
    NoAuth,
    make_authenticator,
    mint_token,
    parse_auth_body,
)

SECRET = "test-secret-that-is-long-enough-for-hs256!"
OTHER = "another-secret-that-is-long-enough-for-hs256"

GOIM_BODY = {"mid": 123, "key": "", "room_id": "live://1000", "platform": "web",
             "accepts": [1000, 1001, 1002]}


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def goim(**changes) -> bytes:
    return json.dumps({**GOIM_BODY, **changes}).encode()


# -- parse_auth_body ----------------------------------------------------------------------------

def test_parse_goim_body():
    fields = parse_auth_body(goim())
    assert fields == {"mid": 123, "key": "", "room_id": "live://1000", "platform": "web",
                      "accepts": (1000, 1001, 1002), "token": ""}


def test_parse_defaults_for_missing_optional_fields():
    assert parse_auth_body(b"{}") == {"mid": 0, "key": "", "room_id": "", "platform": "",
                                      "accepts": (), "token": ""}
    nulls = body(mid=None, key=None, room_id=None, platform=None, accepts=None, token=None)
    assert parse_auth_body(nulls) == parse_auth_body(b"{}")


@pytest.mark.parametrize("raw, expected", [
    (goim(mid=0), {"mid": 0}),
    (goim(mid="42"), {"mid": 42}),                                  # lenient: a string of digits
    (goim(mid=(1 << 63) - 1), {"mid": (1 << 63) - 1}),
    (goim(key="abc-123_XYZ"), {"key": "abc-123_XYZ"}),
    (goim(room_id=""), {"room_id": ""}),
    (goim(room_id="chat://a/b://c"), {"room_id": "chat://a/b://c"}),
    (goim(accepts=[]), {"accepts": ()}),
    (goim(accepts=[1000, 1000, 5]), {"accepts": (1000, 5)}),      # duplicates dropped, order kept
    (goim(platform="ios", extra={"x": 1}), {"platform": "ios"}),  # unknown fields ignored
    (goim(token="t"), {"token": "t"}),
    (" \n".encode() + goim() + b"\n", {"mid": 123}),              # JSON whitespace is fine
])
def test_parse_accepted(raw, expected):
    fields = parse_auth_body(raw)
    for name, value in expected.items():
        assert fields[name] == value


@pytest.mark.parametrize("raw, message", [
    (b"", "auth body is empty"),
    (b"not json", "auth body is not JSON"),
    (b"\xff\xfe{}", "auth body is not JSON"),
    (b'{"mid": 1', "auth body is not JSON"),
    (b"[1, 2]", "auth body must be a JSON object"),
    (b'"live://1"', "auth body must be a JSON object"),
    (b"null", "auth body must be a JSON object"),
    (b"x" * (MAX_AUTH_BODY + 1), f"the limit is {MAX_AUTH_BODY}"),
    (goim(mid="abc"), "mid must be an integer"),
    (goim(mid="-1"), "mid must be an integer"),
    (goim(mid="12a"), "mid must be an integer"),
    (goim(mid=""), "mid must be an integer"),
    (goim(mid=1.5), "mid must be an integer"),
    (goim(mid=2.0), "mid must be an integer"),
    (goim(mid=True), "mid must be an integer"),
    (goim(mid=[1]), "mid must be an integer"),
    (goim(mid=-1), "mid must be >= 0"),
    (goim(mid=1 << 63), "out of range"),
    (goim(key=5), "key must be a string"),
    (goim(key="a,b"), "key must be printable ASCII"),
    (goim(key="a b"), "key must be printable ASCII"),
    (goim(key="x" * 129), "key is 129 characters long"),
    (goim(room_id="live"), "room_id must look like type://id"),
    (goim(room_id="live://"), "room_id must look like type://id"),
    (goim(room_id="://1000"), "room_id must look like type://id"),
    (goim(room_id="live:/1000"), "room_id must look like type://id"),
    (goim(room_id=1000), "room_id must be a string"),
    (goim(platform=1), "platform must be a string"),
    (goim(accepts="1000"), "accepts must be a list of integers"),
    (goim(accepts=1000), "accepts must be a list of integers"),
    (goim(accepts=[1000, "1001"]), "accepts must be a list of integers"),
    (goim(accepts=[True]), "accepts must be a list of integers"),
    (goim(accepts=[1.0]), "accepts must be a list of integers"),
    (goim(accepts=[1 << 31]), "out of the int32 range"),
    (goim(accepts=list(range(1025))), "the limit is 1024"),
    (goim(token=123), "token must be a string"),
])
def test_parse_rejected(raw, message):
    with pytest.raises(AuthError) as info:
        parse_auth_body(raw)
    assert message in str(info.value)


def test_parse_accepts_bytearray_and_memoryview():
    assert parse_auth_body(bytearray(goim()))["mid"] == 123
    assert parse_auth_body(memoryview(goim()))["mid"] == 123


def test_parse_deeply_nested_json_is_an_auth_error():
    with pytest.raises(AuthError):
        parse_auth_body(b"[" * 5000 + b"]" * 5000)


# -- NoAuth -------------------------------------------------------------------------------------

def test_noauth_accepts_goim_body_as_is():
    ident = NoAuth().authenticate(goim())
    assert ident == Identity(mid=123, key="", room_id="live://1000", platform="web",
                             accepts=(1000, 1001, 1002))
    assert isinstance(NoAuth(), Authenticator)


def test_noauth_ignores_a_token():
    assert NoAuth().authenticate(goim(token="whatever")).mid == 123


def test_noauth_still_validates_the_body():
    with pytest.raises(AuthError, match="room_id must look like type://id"):
        NoAuth().authenticate(goim(room_id="nope"))


def test_identity_is_frozen():
    ident = NoAuth().authenticate(goim())
    with pytest.raises(AttributeError):
        ident.mid = 5  # type: ignore[misc]


# -- JwtAuth ------------------------------------------------------------------------------------

def test_jwt_valid_token():
    auth = JwtAuth(SECRET)
    token = mint_token(SECRET, 123)
    ident = auth.authenticate(goim(token=token))
    assert ident == Identity(mid=123, key="", room_id="live://1000", platform="web",
                             accepts=(1000, 1001, 1002))


def test_jwt_mid_comes_from_sub_when_body_mid_is_absent_or_zero():
    auth = JwtAuth(SECRET)
    token = mint_token(SECRET, 77)
    assert auth.authenticate(body(token=token)).mid == 77
    assert auth.authenticate(goim(mid=0, token=token)).mid == 77
    assert auth.authenticate(goim(mid="77", token=token)).mid == 77


def test_jwt_mid_mismatch():
    token = mint_token(SECRET, 5)
    with pytest.raises(AuthError, match="token subject 5 does not match mid 6"):
        JwtAuth(SECRET).authenticate(goim(mid=6, token=token))


def test_jwt_expired():
    token = mint_token(SECRET, 123, ttl=60, now=time.time() - 3600)
    with pytest.raises(AuthError, match="^token expired$"):
        JwtAuth(SECRET).authenticate(goim(token=token))


def test_jwt_leeway_tolerates_small_skew():
    token = mint_token(SECRET, 123, ttl=60, now=time.time() - 70)
    with pytest.raises(AuthError, match="token expired"):
        JwtAuth(SECRET).authenticate(goim(token=token))
    assert JwtAuth(SECRET, leeway=30).authenticate(goim(token=token)).mid == 123


def test_jwt_wrong_secret():
    token = mint_token(OTHER, 123)
    with pytest.raises(AuthError, match="^invalid token signature$"):
        JwtAuth(SECRET).authenticate(goim(token=token))


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"])
def test_jwt_garbage_token(token):
    with pytest.raises(AuthError, match="token is malformed"):
        JwtAuth(SECRET).authenticate(goim(token=token))


def test_jwt_missing_token():
    with pytest.raises(AuthError, match="auth body has no token"):
        JwtAuth(SECRET).authenticate(goim())
    with pytest.raises(AuthError, match="auth body has no token"):
        JwtAuth(SECRET).authenticate(goim(token=""))


def test_jwt_body_rules_still_apply():
    token = mint_token(SECRET, 123)
    with pytest.raises(AuthError, match="auth body is not JSON"):
        JwtAuth(SECRET).authenticate(b"{" + token.encode())
    with pytest.raises(AuthError, match="accepts must be a list of integers"):
        JwtAuth(SECRET).authenticate(goim(token=token, accepts="x"))


def test_jwt_integer_sub_from_another_minter_is_accepted():
    token = jwt.encode({"sub": 9, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert JwtAuth(SECRET).authenticate(body(token=token)).mid == 9


@pytest.mark.parametrize("sub", ["alice", "-3", "", "1.5", True, [1]])
def test_jwt_sub_must_be_a_user_id(sub):
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="token subject must be a user id"):
        JwtAuth(SECRET).authenticate(body(token=token))


def test_jwt_sub_is_required():
    token = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="token has no sub claim"):
        JwtAuth(SECRET).authenticate(body(token=token))


def test_jwt_not_yet_valid():
    token = jwt.encode({"sub": "1", "nbf": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="not valid yet"):
        JwtAuth(SECRET).authenticate(body(token=token))


def test_jwt_other_algorithms_refused():
    secret = SECRET * 2  # HS512 wants a 64-byte key
    token = jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, secret, algorithm="HS512")
    with pytest.raises(AuthError, match="algorithm is not allowed"):
        JwtAuth(secret).authenticate(body(token=token))
    unsigned = jwt.encode({"sub": "1"}, None, algorithm="none")
    with pytest.raises(AuthError):
        JwtAuth(SECRET).authenticate(body(token=unsigned))
    assert JwtAuth(secret, algorithms=("HS512",)).authenticate(body(token=token)).mid == 1


def test_jwt_without_exp_is_refused_unless_configured_otherwise():
    token = jwt.encode({"sub": "8"}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="token has no exp claim"):
        JwtAuth(SECRET).authenticate(body(token=token))
    assert JwtAuth(SECRET, require_exp=False).authenticate(body(token=token)).mid == 8


def test_jwt_empty_secret():
    with pytest.raises(ValueError, match="jwt auth needs a secret: set jwt_secret in the config "
                                         "or IMGATE_JWT_SECRET"):
        JwtAuth("")


def test_jwt_repr_hides_secret():
    assert SECRET not in repr(JwtAuth(SECRET))


# -- mint_token, make_authenticator -------------------------------------------------------------

def test_mint_token_round_trip():
    now = time.time()
    token = mint_token(SECRET, 4242, ttl=120, now=now)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "4242"
    assert claims["exp"] == int(now + 120)
    assert claims["iat"] == int(now)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert JwtAuth(SECRET).verify_token(token) == 4242


def test_mint_token_checks_arguments():
    with pytest.raises(ValueError, match="jwt auth needs a secret"):
        mint_token("", 1)
    with pytest.raises(ValueError, match="user_id"):
        mint_token(SECRET, -1)
    with pytest.raises(ValueError, match="user_id"):
        mint_token(SECRET, "1")  # type: ignore[arg-type]


def test_make_authenticator():
    assert isinstance(make_authenticator("none", ""), NoAuth)
    assert isinstance(make_authenticator("jwt", SECRET), JwtAuth)
    assert isinstance(make_authenticator(" JWT ", SECRET), JwtAuth)
    with pytest.raises(ValueError, match="jwt auth needs a secret"):
        make_authenticator("jwt", "")
    with pytest.raises(ValueError, match="unknown auth mode 'oauth'"):
        make_authenticator("oauth", SECRET)
