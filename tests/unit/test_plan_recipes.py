"""Recipe details that the golden examples do not pin on their own."""

from __future__ import annotations

import textwrap

import pytest

from dynamo_launch.errors import InventoryError
from dynamo_launch.inventory import parse
from dynamo_launch.model import SecretRef
from dynamo_launch.plan import build
from dynamo_launch.plan.spec import ProbeKind

HOSTS = """
[[hosts]]
name = "a"
address = "10.0.0.1"
gpus = 8

[[hosts]]
name = "b"
address = "10.0.0.2"
gpus = 8
"""


def _plan(body: str, *, version: str = "1.6.1", extra_cluster: str = ""):
    text = textwrap.dedent(
        f"""
        [cluster]
        name = "t"
        head = "a"
        state_dir = "/srv/dl"
        dynamo_version = "{version}"
        {extra_cluster}
        """
    ) + HOSTS + textwrap.dedent(body)
    return build(parse(text, "/etc/dl/t.toml"))


DISAGG = """
[[workers]]
name = "decode"
backend = "{backend}"
role = "decode"
model = "m"
hosts = ["a"]

[[workers]]
name = "prefill"
backend = "{backend}"
role = "prefill"
model = "m"
hosts = ["b"]
"""


def test_vllm_role_flags_from_1_0_use_disaggregation_mode_and_nixl() -> None:
    plan = _plan(DISAGG.format(backend="vllm"))
    prefill = plan.process("prefill-0").argv
    decode = plan.process("decode-0").argv
    assert prefill[prefill.index("--disaggregation-mode") + 1] == "prefill"
    assert "NixlConnector" in prefill[prefill.index("--kv-transfer-config") + 1]
    assert decode[decode.index("--disaggregation-mode") + 1] == "decode"
    assert "--is-prefill-worker" not in prefill


def test_unverified_dynamo_versions_are_refused() -> None:
    # 0.9.0 spelled prefill --is-prefill-worker, which 1.4+ rejects: only verified releases render.
    with pytest.raises(InventoryError, match=r"dynamo_version: '0.9.0' is not a verified Dynamo release; accepted: 1.6.0, 1.6.1"):
        _plan(DISAGG.format(backend="vllm"), version="0.9.0")


def test_user_kv_transfer_config_is_not_doubled() -> None:
    body = DISAGG.format(backend="vllm").replace('role = "prefill"', 'role = "prefill"\nextra_args = ["--kv-transfer-config", "{}"]')
    argv = _plan(body).process("prefill-0").argv
    assert argv.count("--kv-transfer-config") == 1


def test_mocker_roles_use_disaggregation_mode() -> None:
    plan = _plan(DISAGG.format(backend="mocker"))
    assert plan.process("prefill-0").argv[-2:] == ("--disaggregation-mode", "prefill")
    assert plan.process("decode-0").argv[-2:] == ("--disaggregation-mode", "decode")


def test_sglang_and_trtllm_roles() -> None:
    sglang = _plan(DISAGG.format(backend="sglang"))
    trtllm = _plan(DISAGG.format(backend="trtllm"))
    assert sglang.process("prefill-0").argv[-2:] == ("--disaggregation-mode", "prefill")
    assert trtllm.process("decode-0").argv[-2:] == ("--disaggregation-mode", "decode")


def test_two_groups_sharing_a_host_get_disjoint_gpu_slices() -> None:
    plan = _plan(
        """
        [[workers]]
        name = "decode"
        backend = "vllm"
        role = "decode"
        model = "m"
        tensor_parallel_size = 4
        hosts = ["a"]

        [[workers]]
        name = "prefill"
        backend = "vllm"
        role = "prefill"
        model = "m"
        tensor_parallel_size = 2
        replicas = 2
        hosts = ["a"]
        """
    )
    env = {p.name: {e.name: e.value for e in p.env} for p in plan.processes}
    assert env["decode-0"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert env["prefill-0"]["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert env["prefill-1"]["CUDA_VISIBLE_DEVICES"] == "6,7"
    ports = [env[n]["DYN_SYSTEM_PORT"] for n in ("decode-0", "prefill-0", "prefill-1")]
    assert ports == ["9090", "9091", "9092"]


def test_whole_host_replicas_do_not_set_cuda_visible_devices() -> None:
    plan = _plan('[[workers]]\nname = "w"\nbackend = "vllm"\nmodel = "m"\ntensor_parallel_size = 8\nhosts = ["a", "b"]\n')
    assert all("CUDA_VISIBLE_DEVICES" not in {e.name for e in p.env} for p in plan.processes)
    assert [p.host for p in plan.processes if p.name.startswith("w-")] == ["a", "b"]


def test_vllm_cache_root_is_shared_by_vllm_processes() -> None:
    plan = _plan(
        '[[workers]]\nname = "w"\nbackend = "vllm"\nmodel = "m"\ntensor_parallel_size = 16\nhosts = ["a", "b"]\n',
        extra_cluster='vllm_cache_root = "/shared/vllm-cache"',
    )
    for name in ("w-0", "w-0-rank1"):
        assert {e.name: e.value for e in plan.process(name).env}["VLLM_CACHE_ROOT"] == "/shared/vllm-cache"


def test_user_env_overrides_derived_env() -> None:
    plan = _plan(
        '[env]\nNCCL_DEBUG = "INFO"\n'
        '[[workers]]\nname = "w"\nbackend = "vllm"\nmodel = "m"\ntensor_parallel_size = 8\nhosts = ["a"]\n'
        '[workers.env]\nVLLM_HOST_IP = "192.0.2.7"\n'
    )
    env = {e.name: e.value for e in plan.process("w-0").env}
    assert env["VLLM_HOST_IP"] == "192.0.2.7" and env["NCCL_DEBUG"] == "INFO"


def test_external_nats_and_etcd_are_not_started_and_not_waited_for() -> None:
    plan = _plan(
        '[nats]\nexternal = "nats://192.0.2.10:4222"\n[etcd]\nexternal = "http://192.0.2.10:2379"\n'
        '[frontend]\n'
    )
    assert [p.name for p in plan.processes] == ["frontend"]
    front = plan.process("frontend")
    assert front.depends_on == ()
    assert {e.name: e.value for e in front.env}["NATS_SERVER"] == "nats://192.0.2.10:4222"


def test_generic_process_dependencies_gangs_and_probes() -> None:
    plan = _plan(
        """
        [[processes]]
        name = "svc"
        hosts = ["a", "b"]
        command = ["srv", "--port", "7000"]
        [processes.health]
        check = "tcp"
        port = 7000

        [[processes]]
        name = "lead"
        host = "a"
        command = ["x"]
        gang = "pair"
        depends_on = ["svc", "nats"]

        [[processes]]
        name = "follow"
        host = "b"
        command = ["y"]
        gang = "pair"
        depends_on = ["lead"]
        """
    )
    lead = plan.process("lead")
    assert [g.process for g in lead.depends_on] == ["svc-a", "svc-b", "nats"]
    assert plan.process("svc-b").readiness.kind is ProbeKind.TCP and plan.process("svc-b").readiness.address == "10.0.0.2"
    assert lead.readiness.kind is ProbeKind.PROCESS and lead.liveness is None
    (gang,) = plan.gangs
    assert gang.members == ("lead", "follow")
    names = [p.name for p in plan.processes]
    assert names.index("svc-b") < names.index("lead") < names.index("follow")


def test_plan_is_deterministic() -> None:
    body = DISAGG.format(backend="vllm")
    assert _plan(body) == _plan(body)


# -- NATS and etcd -------------------------------------------------------------------------------


def test_nats_and_etcd_on_the_head_by_default() -> None:
    plan = _plan("[frontend]\n")
    nats, etcd = plan.process("nats"), plan.process("etcd")
    assert nats.argv[nats.argv.index("nats-server"):] == ("nats-server", "-c", "/srv/dl/nats.conf", "-js", "-sd",
                                                          "/srv/dl/nats", "-m", "8222", "-a", "10.0.0.1", "-p", "4222")
    assert nats.readiness.url == nats.liveness.url == "http://10.0.0.1:8222/healthz?js-enabled-only=true"
    assert etcd.argv[etcd.argv.index("--data-dir") + 1] == "/srv/dl/etcd"
    assert etcd.argv[etcd.argv.index("--advertise-client-urls") + 1] == "http://10.0.0.1:2379"
    assert etcd.argv[etcd.argv.index("--listen-client-urls") + 1] == "http://10.0.0.1:2379,http://127.0.0.1:2379"
    assert etcd.readiness.url == "http://10.0.0.1:2379/health"
    assert nats.never_give_up and etcd.never_give_up and (nats.host, etcd.host) == ("a", "a")
    assert [p.name for p in plan.processes][:2] == ["nats", "etcd"]  # started first
    front = {e.name: e.value for e in plan.process("frontend").env}
    assert (front["NATS_SERVER"], front["ETCD_ENDPOINTS"]) == ("nats://10.0.0.1:4222", "http://10.0.0.1:2379")
    # secure by default: generated credentials, by reference (the daemon makes them at `up`)
    assert front["NATS_AUTH_TOKEN"] == SecretRef("generated", "/srv/dl/credentials/nats-token")
    assert front["ETCD_AUTH_USERNAME"] == "dynamo"
    assert front["ETCD_AUTH_PASSWORD"] == SecretRef("generated", "/srv/dl/credentials/etcd-dynamo-password")


def test_the_launchers_etcd_has_auth_set_up_before_it_listens_and_no_secret_on_its_command_line() -> None:
    import json

    from dynamo_launch.plan.infra import ETCD_AUTH_BOOT, ETCD_DYNAMO_ROLE
    from dynamo_launch.plan.render import to_text

    plan = _plan("[frontend]\n")
    etcd = plan.process("etcd")
    assert etcd.argv[:4] == ("python3", "-c", ETCD_AUTH_BOOT, json.dumps(ETCD_DYNAMO_ROLE, separators=(",", ":")))
    assert etcd.argv[4] == "etcd"
    env = {e.name: e.value for e in etcd.env}
    assert env["DL_ETCD_ROOT_PASSWORD"] == SecretRef("generated", "/srv/dl/credentials/etcd-root-password")
    assert env["DL_ETCD_USER_PASSWORD"] == SecretRef("generated", "/srv/dl/credentials/etcd-dynamo-password")
    assert 'DL_ETCD_ROOT_PASSWORD="$(cat /srv/dl/credentials/etcd-root-password)"' in to_text(plan)


def test_external_nats_and_etcd_keep_the_operators_settings() -> None:
    plan = _plan('[nats]\nexternal = "nats://n:4222"\n[etcd]\nexternal = "http://e:2379"\n[frontend]\n')
    front = {e.name for e in plan.process("frontend").env}
    assert not front & {"NATS_AUTH_TOKEN", "ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD"}


def test_nats_bind_elsewhere_when_asked_and_still_reached_at_the_head() -> None:
    plan = _plan('[nats]\nbind = "0.0.0.0"\n[frontend]\n')
    nats = plan.process("nats")
    assert nats.argv[nats.argv.index("-a") + 1] == "0.0.0.0"
    assert nats.readiness.address == "10.0.0.1" and plan.nats_url == "nats://10.0.0.1:4222"


def test_nats_token_is_never_on_a_command_line_or_in_the_plan() -> None:
    from dynamo_launch.model import SecretRef
    from dynamo_launch.plan.infra import NATS_AUTH_CONFIG
    from dynamo_launch.plan.render import to_json, to_text

    plan = _plan('[nats]\ntoken = "${NATS_TOKEN}"\n[frontend]\n'
                 '[[processes]]\nname = "side"\nhost = "b"\ncommand = ["x"]\n'
                 '[[processes]]\nname = "dyn"\nhost = "b"\ncommand = ["y"]\ndynamo = true\n')
    nats = plan.process("nats")
    assert nats.argv == ("python3", "-c", NATS_AUTH_CONFIG, "/srv/dl/nats.conf", "nats-server", "-c", "/srv/dl/nats.conf",
                         "-js", "-sd", "/srv/dl/nats", "-m", "8222", "-a", "10.0.0.1", "-p", "4222")
    ref = SecretRef("env", "NATS_TOKEN")
    for name in ("nats", "frontend", "dyn"):
        env = {e.name: e for e in plan.process(name).env}
        assert env["NATS_AUTH_TOKEN"].value == ref and env["NATS_AUTH_TOKEN"].secret, name
    assert "NATS_AUTH_TOKEN" not in {e.name for e in plan.process("side").env}  # not a Dynamo process
    assert "NATS_AUTH_TOKEN" not in {e.name for e in plan.process("etcd").env}
    assert plan.nats_url == "nats://10.0.0.1:4222"  # no credentials in the URL
    text, as_json = to_text(plan), to_json(plan)
    assert 'NATS_AUTH_TOKEN="$NATS_TOKEN"' in text and '"secret": "${NATS_TOKEN}"' in as_json


def test_nats_user_and_password_with_an_external_server_are_passed_on() -> None:
    plan = _plan('[nats]\nexternal = "nats://192.0.2.10:4222"\nuser = "dyn"\npassword = "file:/etc/dl/pw"\n[frontend]\n')
    assert "nats" not in [p.name for p in plan.processes]
    env = {e.name: e.value for e in plan.process("frontend").env}
    assert env["NATS_AUTH_USERNAME"] == "dyn" and str(env["NATS_AUTH_PASSWORD"]) == "file:/etc/dl/pw"


def test_ray_head_and_worker_args_go_to_their_own_nodes_only() -> None:
    plan = _plan("""
        [ray]
        head = "a"
        workers = ["b"]
        num_cpus = 2
        extra_args = ["--temp-dir=/srv/ray"]
        head_args = ["--dashboard-host=0.0.0.0"]
        worker_args = ["--labels={\\"zone\\": \\"b\\"}"]
        """)
    head, worker = plan.process("ray-head").argv, plan.process("ray-1").argv
    assert head[-4:] == ("--num-cpus=2", "--temp-dir=/srv/ray", "--dashboard-host=0.0.0.0", "--block")
    assert worker[-4:] == ("--num-cpus=2", "--temp-dir=/srv/ray", '--labels={"zone": "b"}', "--block")


@pytest.mark.parametrize("bind, listens, probed", [
    ("", "10.0.0.2", "10.0.0.2"),                        # its host's cluster address, not every interface
    ('bind = "0.0.0.0"', "0.0.0.0", "10.0.0.2"),         # widened: still probed on the cluster address
    ('bind = "127.0.0.1"', "127.0.0.1", "127.0.0.1"),    # narrowed: probed where it listens
])
def test_the_frontend_listens_on_its_host_s_address_unless_bind_says_otherwise(bind: str, listens: str,
                                                                              probed: str) -> None:
    fe = _plan(f'[frontend]\nhost = "b"\n{bind}\n').process("frontend")
    i = fe.argv.index("--http-host")
    assert fe.argv[i + 1] == listens and fe.argv.count("--http-host") == 1
    assert fe.readiness is not None and fe.readiness.url == f"http://{probed}:8000/health"


def test_frontend_flags_the_launcher_renders_are_refused_in_extra_args() -> None:
    with pytest.raises(InventoryError) as e:
        _plan('[frontend]\nextra_args = ["--http-host=0.0.0.0", "--kv-cache-block-size", "16"]\n')
    assert [str(p) for p in e.value.problems] == [
        "/etc/dl/t.toml:19: frontend.extra_args[0]: --http-host is rendered by the launcher; set frontend.bind instead"]


AGG = """
[frontend]
{frontend}

[[workers]]
name = "w"
backend = "mocker"
model = "m"
hosts = [{hosts}]
"""


@pytest.mark.parametrize("hosts, frontend, limit", [
    ('"a", "b"', "", "3"),                        # two replicas: a dead worker's requests move to the other
    ('"a"', "", None),                            # one replica: nowhere to move them (Dynamo's default, off)
    ('"a", "b"', "migration_limit = 0", None),    # turned off
    ('"a"', "migration_limit = 5", "5"),          # asked for
])
def test_request_migration_is_on_when_more_than_one_replica_serves(hosts: str, frontend: str,
                                                                   limit: str | None) -> None:
    argv = _plan(AGG.format(hosts=hosts, frontend=frontend)).process("frontend").argv
    assert (argv[argv.index("--migration-limit") + 1] if "--migration-limit" in argv else None) == limit
    assert argv.count("--migration-limit") <= 1


def test_a_dynamo_worker_knows_its_metrics_and_the_frontend_that_must_route_to_it() -> None:
    plan = _plan(AGG.format(hosts='"a", "b"', frontend='host = "b"\nbind = "0.0.0.0"\nhttp_port = 8080'))
    routing = plan.process("w-1").routing
    assert routing is not None
    assert routing.metrics_url == "http://10.0.0.2:9090/metrics"
    assert (routing.frontend, routing.frontend_url) == ("frontend", "http://10.0.0.2:8080/health")
    assert plan.process("frontend").routing is None and plan.process("nats").routing is None


def test_a_worker_with_a_process_check_has_no_routing_readiness() -> None:
    plan = _plan(AGG.format(hosts='"a"', frontend="") + '[workers.health]\ncheck = "process"\n')
    assert plan.process("w-0").routing is None


def test_max_unavailable_is_read_and_checked() -> None:
    with pytest.raises(InventoryError) as e:
        _plan(AGG.format(hosts='"a"', frontend="") + "max_unavailable = 0\n")
    assert "workers[0].max_unavailable" in str(e.value)


def test_a_dynamo_process_probed_on_http_gets_its_instance_learned_but_no_routing_wait() -> None:
    body = """
    [[processes]]
    name = "leader"
    host = "b"
    command = ["python", "-m", "dynamo.mocker", "--model-path", "/m"]
    dynamo = {dynamo}
    env = {{ DYN_SYSTEM_PORT = "9345" }}
    [processes.health]
    check = "http"
    port = 9345
    path = "/health"
    """
    routing = _plan(body.format(dynamo="true")).process("leader").routing
    assert routing is not None and routing.metrics_url == "http://10.0.0.2:9345/metrics"
    assert (routing.frontend, routing.frontend_url) == ("", "")
    assert _plan(body.format(dynamo="false")).process("leader").routing is None
