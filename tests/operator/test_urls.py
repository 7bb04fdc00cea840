"""The only URLs a user can aim the operator at: checked, rebuilt, the Pushgateway path only."""

from __future__ import annotations

import pytest

from diffar.operator.urls import UnsafeURL, pushgateway_group_url, url_problem

KEY = {"namespace": "research", "run": "mdm-small"}


@pytest.mark.parametrize(
    "base",
    [
        "http://pg.monitoring.svc:9091/?x=/metrics/job/other",
        "http://pg:9091/#frag",
        "http://admin@kubernetes.default.svc/",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://[fd00:ec2::254]/",
        "ftp://pg:21/",
        "http://pg:99999/",
        "http://0.0.0.0:9091",
        "http://pg:9091/%0d%0aX:1\n",
        "http://pg:9091/$(DIFFAR_RUN)",
    ],
)
def test_unsafe_bases_are_refused(base):
    assert url_problem(base)
    with pytest.raises(UnsafeURL):
        pushgateway_group_url(base, "diffar-eval", KEY)


@pytest.mark.parametrize(
    ("base", "url"),
    [
        (
            "http://prometheus-pushgateway.monitoring.svc:9091",
            "http://prometheus-pushgateway.monitoring.svc:9091/metrics/job/diffar-eval"
            "/namespace/research/run/mdm-small",
        ),
        (
            "https://10.1.2.3:9091/pg/",
            "https://10.1.2.3:9091/pg/metrics/job/diffar-eval/namespace/research/run/mdm-small",
        ),
    ],
)
def test_the_group_url_is_the_documented_api_path(base, url):
    assert url_problem(base) is None
    assert pushgateway_group_url(base, "diffar-eval", KEY) == url


def test_values_cannot_split_a_path_segment():
    url = pushgateway_group_url("http://pg:9091", "diffar-eval", {"run": "../../x?y"})
    assert url == "http://pg:9091/metrics/job/diffar-eval/run/..%2F..%2Fx%3Fy"


def test_the_operator_sends_nothing_to_an_unsafe_base(caplog):
    from diffar.operator.handlers import delete_pushgateway_group

    key = {"job": "diffar-eval", **KEY}
    assert not delete_pushgateway_group("http://169.254.169.254/", key, timeout=0.1)
    assert "not deleting" in caplog.text
