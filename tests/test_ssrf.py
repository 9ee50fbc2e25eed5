"""SSRF guard: the address classifier as a pure function, and refusal before any packet, on loopback only."""

from __future__ import annotations

import gzip
import io
import ipaddress
import shutil
import subprocess

import pytest
from PIL import Image

from _loopback import LoopbackServer, Reply, Request
from mmsearch_r1.search.base import SearchError
from mmsearch_r1.search.ssrf import UnsafeURLError, UrlPolicy, check_url, is_public_ip, parse_legacy_ipv4
from mmsearch_r1.search.web.fetch import FetchReader, SafeFetcher

NEVER = "must not be called"


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver called for {host}: {NEVER}")


@pytest.mark.parametrize(
    "spelling, ip",
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_legacy_ipv4_spellings_mean_what_resolvers_mean(spelling: str, ip: str) -> None:
    assert parse_legacy_ipv4(spelling) == ipaddress.IPv4Address(ip)


@pytest.mark.parametrize("name", ["example.com", "1.2.3.4.5", "256.1.1.1", "08.1.1.1", "a.b", ""])
def test_names_are_not_mistaken_for_numbers(name: str) -> None:
    assert parse_legacy_ipv4(name) is None


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1", "0.0.0.0", "10.2.3.4", "172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1",
        "169.254.169.254", "224.0.0.1", "255.255.255.255", "::1", "::", "fc00::1", "fd12::1", "fe80::1",
        "::ffff:7f00:1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "192.0.2.1", "198.18.0.1",
    ],
)  # fmt: skip
def test_non_global_addresses_are_refused(ip: str) -> None:
    assert not is_public_ip(ipaddress.ip_address(ip))


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_global_addresses_pass(ip: str) -> None:
    assert is_public_ip(ipaddress.ip_address(ip))


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:7f00:1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:80/",
        "http://10.0.0.1/",
        "https://[fe80::1]/",
    ],
)
def test_check_url_refuses_internal_literals_without_dns(url: str) -> None:
    with pytest.raises(UnsafeURLError, match="non-global"):
        check_url(url, UrlPolicy.make(resolver=_no_dns))


def test_names_resolving_inside_are_refused_any_address_counts() -> None:
    table = {
        "metadata.google.internal": ["169.254.169.254"],
        "mixed.example": ["93.184.216.34", "10.0.0.7"],  # one bad address is enough
        "v6.example": ["fd00::5"],
        "good.example": ["93.184.216.34"],
    }
    policy = UrlPolicy.make(resolver=lambda host, port: table[host])
    for host in ("metadata.google.internal", "mixed.example", "v6.example"):
        with pytest.raises(UnsafeURLError, match=host):
            check_url(f"http://{host}/x", policy)
    assert [str(ip) for ip in check_url("https://good.example/a", policy)] == ["93.184.216.34"]


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "gopher://x/", "ftp://example.com/", "http:///nohost", "http://u:p@example.com/"],
)
def test_bad_schemes_and_shapes_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURLError):
        check_url(url, UrlPolicy.make(resolver=_no_dns))


# --- real fetches, loopback only ----------------------------------------------------------------------------


@pytest.fixture
def forbidden() -> LoopbackServer:
    """A server on 127.0.0.2 (never allow-listed): it must never see a connection."""
    with LoopbackServer(
        lambda r: Reply(body="<html><title>secret</title><p>internal</p></html>"), host="127.0.0.2"
    ) as s:
        yield s


def test_refused_before_any_packet_direct_and_via_redirect(forbidden: LoopbackServer) -> None:
    target = forbidden.url + "/admin"

    def allowed(req: Request) -> Reply:
        if req.path == "/hop":
            return Reply(status=302, headers={"Location": target})
        return Reply(status=301, headers={"Location": "/hop"})

    with LoopbackServer(allowed) as ok:
        f = SafeFetcher(allow_hosts=["127.0.0.1"])
        with pytest.raises(UnsafeURLError, match="127.0.0.2"):
            f.fetch(target)
        with pytest.raises(UnsafeURLError, match="127.0.0.2"):
            f.fetch(ok.url + "/start")
        assert [r.path for r in ok.requests] == ["/start", "/hop"]  # redirects followed by hand, re-checked
    assert forbidden.connections == 0 and forbidden.hits == 0


def test_connect_time_guard_holds_even_if_the_precheck_is_skipped(forbidden: LoopbackServer) -> None:
    """The transport itself re-resolves and re-checks (no DNS-rebinding window between check and connect)."""
    f = SafeFetcher(allow_hosts=["127.0.0.1"])
    with pytest.raises(UnsafeURLError):
        f._client.get(forbidden.url + "/")  # bypass fetch(): straight to the guarded transport
    assert forbidden.connections == 0


def _png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_caps_content_types_and_redirect_limits() -> None:
    big = b"<html><body>" + b"x" * 50_000 + b"</body></html>"
    bomb = gzip.compress(b"A" * 5_000_000)  # ~5 KB on the wire, 5 MB decompressed
    routes = {
        "/big.html": Reply(body=big, headers={"Content-Type": "text/html"}),
        "/bomb.png": Reply(body=bomb, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}),
        "/bomb.html": Reply(body=bomb, headers={"Content-Type": "text/html", "Content-Encoding": "gzip"}),
        "/img.png": Reply(body=_png(), headers={"Content-Type": "image/png"}),
        "/svg": Reply(body="<svg/>", headers={"Content-Type": "image/svg+xml"}),
        "/exe": Reply(body=b"MZ", headers={"Content-Type": "application/octet-stream"}),
        "/br": Reply(body=b"x", headers={"Content-Type": "text/html", "Content-Encoding": "br"}),
        "/loop": Reply(status=302, headers={"Location": "/loop"}),
        "/gone": Reply(status=404, body="nope"),
    }
    with LoopbackServer(lambda r: routes[r.path]) as srv:
        f = SafeFetcher(
            allow_hosts=["127.0.0.1"], max_page_bytes=10_000, max_image_bytes=20_000, max_redirects=3
        )
        page = f.fetch(srv.url + "/big.html")
        assert page.truncated and len(page.body) == 10_000
        with pytest.raises(SearchError, match="cap"):
            f.fetch(srv.url + "/bomb.png", "image")
        assert len(f.fetch(srv.url + "/bomb.html").body) == 10_000  # decompression stops at the cap
        assert f.fetch(srv.url + "/img.png", "image").body == _png()
        for path, kind in (("/svg", "image"), ("/img.png", "page"), ("/exe", "page"), ("/big.html", "image")):
            with pytest.raises(SearchError, match="content type"):
                f.fetch(srv.url + path, kind)
        with pytest.raises(SearchError, match="encoding"):
            f.fetch(srv.url + "/br")
        before = srv.hits
        with pytest.raises(SearchError, match="too many redirects"):
            f.fetch(srv.url + "/loop")
        assert srv.hits - before == 4  # first request + 3 redirects, then stop
        with pytest.raises(SearchError) as e:
            f.fetch(srv.url + "/gone")
        assert e.value.status == 404 and not e.value.retryable


def test_fetch_reader_extracts_main_text() -> None:
    html = (
        "<html><head><title>Eiffel &amp; Co</title></head><body><nav>Home | About | Shop</nav>"
        "<article><h1>The tower</h1><p>The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in "
        "Paris, France. It was designed by the company of Gustave Eiffel and completed in 1889 for the World's "
        "Fair.</p><p>It is 330 metres tall and was the tallest man-made structure until 1930.</p></article>"
        "<footer>Copyright links</footer></body></html>"
    )
    with LoopbackServer(
        lambda r: Reply(body=html, headers={"Content-Type": "text/html; charset=utf-8"})
    ) as srv:
        reader = FetchReader(allow_hosts=["127.0.0.1"])
        page = reader.read(srv.url + "/eiffel")
    assert page.title == "Eiffel & Co"
    assert "completed in 1889" in page.text and "330 metres" in page.text
    assert "Home | About" not in page.text
    assert reader.counters.get("calls") == 1 and reader.counters.get("errors") == 0
    latin = (
        b'<html><head><meta charset="latin-1"><title>Caf\xe9</title></head><body><article><p>Caf\xe9 au lait is '
        b"a coffee drink made with hot milk, popular in France and in many other places around the world.</p>"
        b"</article></body></html>"
    )
    with LoopbackServer(lambda r: Reply(body=latin, headers={"Content-Type": "text/html"})) as srv:
        assert "Café au lait" in FetchReader(allow_hosts=["127.0.0.1"]).read(srv.url + "/").text
    with pytest.raises(UnsafeURLError):
        FetchReader().read("http://127.0.0.1:9/")  # default policy: loopback refused, nothing sent


def _cert(tmp_path, name: str) -> tuple[str, str]:
    key, crt = str(tmp_path / f"{name}.key"), str(tmp_path / f"{name}.crt")
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
           "-keyout", key, "-out", crt, "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return crt, key


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl CLI to make a test certificate"
)
def test_tls_verifies_the_url_host_name_while_connecting_to_the_checked_ip(tmp_path) -> None:
    """Connect to the checked IP, yet SNI, certificate check and Host header all use the URL's name."""
    good, wrong = _cert(tmp_path, "public.test"), _cert(tmp_path, "other.test")
    resolver = {"public.test": ["127.0.0.1"]}.__getitem__
    page = Reply(body="<html><title>ok</title></html>", headers={"Content-Type": "text/html"})
    with LoopbackServer(lambda r: page, tls=good) as srv:
        url = f"https://public.test:{srv.port}/p"
        res = SafeFetcher(allow_hosts=["127.0.0.1"], resolver=lambda h, p: resolver(h), verify=good[0]).fetch(
            url
        )
        assert res.status == 200 and b"ok" in res.body
        assert srv.sni == ["public.test"] and srv.requests[0].headers["host"] == f"public.test:{srv.port}"
        with pytest.raises(
            SearchError, match="certificate verification failed"
        ):  # default: system CAs, which do not trust this certificate
            SafeFetcher(allow_hosts=["127.0.0.1"], resolver=lambda h, p: resolver(h)).fetch(url)
        assert srv.hits == 1
    with LoopbackServer(lambda r: page, tls=wrong) as srv:  # trusted certificate, but for another name
        f = SafeFetcher(allow_hosts=["127.0.0.1"], resolver=lambda h, p: resolver(h), verify=wrong[0])
        with pytest.raises(SearchError, match="Hostname mismatch") as e:
            f.fetch(f"https://public.test:{srv.port}/p")
        assert srv.hits == 0 and not e.value.retryable
