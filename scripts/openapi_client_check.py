"""The REST surface as a generated client sees it: a client made by
openapi-python-client from rdm's /openapi.json signs in, creates and lists
devices and reads the demo agent over SNMP. Run by scripts/openapi-client.sh
against `rdm up --demo`; exits non-zero on the first thing that fails."""
import sys

from rdm_api_client import AuthenticatedClient, Client
from rdm_api_client.api.auth_service import auth_service_login
from rdm_api_client.api.device_service import (
    device_service_create_device,
    device_service_list_devices,
)
from rdm_api_client.api.snmp_service import snmp_service_get
from rdm_api_client.models import (
    RdmInventoryV1CreateDeviceRequest,
    RdmInventoryV1LoginRequest,
    RdmInventoryV1LoginResponse,
    RdmInventoryV1ListDevicesResponse,
    RdmSnmpV1GetRequest,
    RdmSnmpV1GetResponse,
    RdmSnmpV1Target,
)

base = sys.argv[1]
login = auth_service_login.sync(
    client=Client(base_url=base),
    body=RdmInventoryV1LoginRequest(tenant="demo", username="demo", password="demo"),
)
assert isinstance(login, RdmInventoryV1LoginResponse), login
client = AuthenticatedClient(base_url=base, token=login.access_token)

made = device_service_create_device.sync(
    client=client,
    body=RdmInventoryV1CreateDeviceRequest(name="from-python", address="192.0.2.44"),
)
assert getattr(made, "name", None) == "from-python", made

listed = device_service_list_devices.sync(client=client, page_size=100)
assert isinstance(listed, RdmInventoryV1ListDevicesResponse), listed
names = {d.name: d.id for d in listed.devices}
assert "from-python" in names and "demo-cpe-1" in names, names

got = snmp_service_get.sync(
    client=client,
    body=RdmSnmpV1GetRequest(
        target=RdmSnmpV1Target(device_id=names["demo-cpe-1"]),
        oids=["1.3.6.1.2.1.1.5.0"],
    ),
)
assert isinstance(got, RdmSnmpV1GetResponse), got
assert got.varbinds[0].value == "demo-cpe-1", got
print("generated client: signed in, created and listed devices, read sysName over SNMP")
