//! The USP controller's MQTT 5 transport against a simulated agent on the
//! real Mosquitto broker (127.0.0.1:1883; `./test.sh` starts it): every
//! request type the agent takes, USP errors, a malformed record dropped,
//! an agent that is not there.
use rdm_proto::usp_msg as msg;
use rdm_sims::usp_agent;
use rdm_usp::{
    inbox::{Inbox, RequestError},
    mqtt::{Broker, BrokerSettings},
    record,
};
use std::time::Duration;

const BROKER: (&str, u16) = ("127.0.0.1", 1883);

/// A controller and one agent on the broker, with names no other test uses.
async fn pair() -> (Broker, usp_agent::UspAgent) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let endpoint_id = format!("self::rdm-{}", &run[..8]);
    let agent = usp_agent::start(
        BROKER.0,
        BROKER.1,
        &format!("os::012345-{}", &run[..12]),
        &format!("usp/agent/{run}"),
        &format!("usp/controller/{run}"),
        &endpoint_id,
    )
    .await
    .expect("the simulated agent subscribes (is Mosquitto running on 127.0.0.1:1883?)");
    let inbox = Inbox::new(endpoint_id.clone(), tokio::sync::mpsc::channel(16).0);
    let broker = Broker::connect(
        BrokerSettings {
            host: BROKER.0.into(),
            port: BROKER.1,
            client_id: String::new(),
            username: None,
            password: None,
            endpoint_id,
            topic: format!("usp/controller/{run}"),
            notify_topic: String::new(),
            tls: None,
            own: false,
        },
        std::sync::Arc::new(inbox),
    );
    (broker, agent)
}

/// Sends `req` to the agent; the body of its reply.
async fn call(
    broker: &Broker,
    agent: &usp_agent::UspAgent,
    t: msg::header::MsgType,
    req: msg::request::ReqType,
) -> msg::body::MsgBody {
    let request = record::request(&broker.inbox().msg_id(), t, req);
    let reply = broker
        .request(
            &agent.endpoint_id,
            &agent.topic,
            false,
            request,
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    reply.body.and_then(|b| b.msg_body).expect("a body")
}

fn response(body: msg::body::MsgBody) -> msg::response::RespType {
    match body {
        msg::body::MsgBody::Response(r) => r.resp_type.expect("a response"),
        other => panic!("not a response: {other:?}"),
    }
}

fn usp_error(body: msg::body::MsgBody) -> msg::Error {
    match body {
        msg::body::MsgBody::Error(e) => e,
        other => panic!("not an error: {other:?}"),
    }
}

fn setting(param: &str, value: &str, required: bool) -> msg::set::UpdateParamSetting {
    msg::set::UpdateParamSetting {
        param: param.into(),
        value: value.into(),
        required,
    }
}

#[tokio::test]
async fn every_request_type_over_mqtt() {
    use msg::{header::MsgType as T, request::ReqType as Q, response::RespType as R};
    let (broker, agent) = pair().await;

    // Get: a parameter, an object, a search expression, a bad path.
    let get = Q::Get(msg::Get {
        param_paths: vec![
            "Device.DeviceInfo.SoftwareVersion".into(),
            "Device.WiFi.SSID.[Alias==\"guest\"].".into(),
            "Device.Nope.".into(),
        ],
        max_depth: 0,
    });
    let R::GetResp(got) = response(call(&broker, &agent, T::Get, get).await) else {
        panic!("not a GetResp")
    };
    let r = &got.req_path_results;
    assert_eq!(
        r[0].resolved_path_results[0].resolved_path,
        "Device.DeviceInfo."
    );
    assert_eq!(
        r[0].resolved_path_results[0].result_params["SoftwareVersion"],
        "1.0"
    );
    assert_eq!(r[1].resolved_path_results.len(), 1, "{:?}", r[1]);
    assert_eq!(
        r[1].resolved_path_results[0].resolved_path,
        "Device.WiFi.SSID.2."
    );
    assert_eq!(
        r[1].resolved_path_results[0].result_params["SSID"],
        "home-guest"
    );
    assert_eq!(r[2].err_code, 7026);

    // Set: a required read-only parameter is Error 7004 with a 7013
    // param_err and nothing written; allow_partial turns it into 7021 for
    // that object while the others are written.
    let update = |obj: &str, settings| msg::set::UpdateObject {
        obj_path: obj.into(),
        param_settings: settings,
    };
    let set = |allow_partial, objs| {
        Q::Set(msg::Set {
            allow_partial,
            update_objs: objs,
        })
    };
    let refused = usp_error(
        call(
            &broker,
            &agent,
            T::Set,
            set(
                false,
                vec![update(
                    "Device.WiFi.SSID.1.",
                    vec![
                        setting("SSID", "cafe", true),
                        setting("Status", "Down", true),
                    ],
                )],
            ),
        )
        .await,
    );
    assert_eq!(refused.err_code, 7004, "{refused:?}");
    assert_eq!(
        (
            refused.param_errs[0].param_path.as_str(),
            refused.param_errs[0].err_code
        ),
        ("Device.WiFi.SSID.1.Status", 7013)
    );
    assert_eq!(
        agent.value("Device.WiFi.SSID.1.SSID").as_deref(),
        Some("home")
    );
    let R::SetResp(partial) = response(
        call(
            &broker,
            &agent,
            T::Set,
            set(
                true,
                vec![
                    update("Device.WiFi.SSID.1.", vec![setting("SSID", "cafe", true)]),
                    update("Device.WiFi.SSID.2.", vec![setting("Status", "Down", true)]),
                ],
            ),
        )
        .await,
    ) else {
        panic!("not a SetResp")
    };
    use msg::set_resp::updated_object_result::operation_status::OperStatus;
    let status = |i: usize| {
        partial.updated_obj_results[i]
            .oper_status
            .clone()
            .unwrap()
            .oper_status
            .unwrap()
    };
    assert!(
        matches!(status(0), OperStatus::OperSuccess(_)),
        "{partial:?}"
    );
    assert!(
        matches!(status(1), OperStatus::OperFailure(ref f) if f.err_code == 7021),
        "{partial:?}"
    );
    assert_eq!(
        agent.value("Device.WiFi.SSID.1.SSID").as_deref(),
        Some("cafe")
    );

    // Add, GetInstances, Delete.
    let add = Q::Add(msg::Add {
        allow_partial: false,
        create_objs: vec![msg::add::CreateObject {
            obj_path: "Device.WiFi.SSID.".into(),
            param_settings: vec![msg::add::CreateParamSetting {
                param: "Alias".into(),
                value: "lab".into(),
                required: true,
            }],
        }],
    });
    let R::AddResp(added) = response(call(&broker, &agent, T::Add, add).await) else {
        panic!("not an AddResp")
    };
    use msg::add_resp::created_object_result::operation_status::OperStatus as AddStatus;
    let Some(AddStatus::OperSuccess(created)) = added.created_obj_results[0]
        .oper_status
        .clone()
        .unwrap()
        .oper_status
    else {
        panic!("{added:?}")
    };
    assert_eq!(created.instantiated_path, "Device.WiFi.SSID.3.");
    assert_eq!(created.unique_keys["Alias"], "lab");
    let instances = Q::GetInstances(msg::GetInstances {
        obj_paths: vec!["Device.WiFi.SSID.".into()],
        first_level_only: true,
    });
    let R::GetInstancesResp(listed) =
        response(call(&broker, &agent, T::GetInstances, instances.clone()).await)
    else {
        panic!("not a GetInstancesResp")
    };
    let paths: Vec<&str> = listed.req_path_results[0]
        .curr_insts
        .iter()
        .map(|i| i.instantiated_obj_path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "Device.WiFi.SSID.1.",
            "Device.WiFi.SSID.2.",
            "Device.WiFi.SSID.3."
        ]
    );
    let delete = Q::Delete(msg::Delete {
        allow_partial: false,
        obj_paths: vec!["Device.WiFi.SSID.[Alias==\"lab\"].".into()],
    });
    let R::DeleteResp(deleted) = response(call(&broker, &agent, T::Delete, delete).await) else {
        panic!("not a DeleteResp")
    };
    assert_eq!(agent.value("Device.WiFi.SSID.3.Alias"), None, "{deleted:?}");

    // Operate, GetSupportedProtocol, and a request the agent does not take.
    let reboot = Q::Operate(msg::Operate {
        command: "Device.Reboot()".into(),
        command_key: "k1".into(),
        send_resp: true,
        input_args: Default::default(),
    });
    let R::OperateResp(done) = response(call(&broker, &agent, T::Operate, reboot).await) else {
        panic!("not an OperateResp")
    };
    assert_eq!(
        done.operation_results[0].executed_command,
        "Device.Reboot()"
    );
    assert_eq!(agent.reboots(), 1);
    let R::GetSupportedProtocolResp(proto) = response(
        call(
            &broker,
            &agent,
            T::GetSupportedProto,
            Q::GetSupportedProtocol(msg::GetSupportedProtocol {
                controller_supported_protocol_versions: "1.3,1.4".into(),
            }),
        )
        .await,
    ) else {
        panic!("not a GetSupportedProtocolResp")
    };
    assert_eq!(proto.agent_supported_protocol_versions, "1.3,1.4");
}

#[tokio::test]
async fn lying_or_absent_agents_do_not_stop_the_controller() {
    use msg::{header::MsgType as T, request::ReqType as Q};
    let (broker, agent) = pair().await;
    let ping = Q::GetSupportedProtocol(msg::GetSupportedProtocol {
        controller_supported_protocol_versions: "1.3".into(),
    });
    call(&broker, &agent, T::GetSupportedProto, ping.clone()).await;

    // Garbage and a reply to no request, straight onto the controller's
    // topic: dropped and counted.
    let (client, mut events) = rumqttc::v5::AsyncClient::new(
        rumqttc::v5::MqttOptions::new(
            format!("liar-{}", uuid::Uuid::new_v4().simple()),
            BROKER.0,
            BROKER.1,
        ),
        16,
    );
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let topic = broker.settings().topic.clone();
    let stray = record::wrap(
        &agent.endpoint_id,
        &broker.settings().endpoint_id,
        &record::request("nobody-asked", T::Get, ping.clone()),
    );
    for payload in [b"\xff\x00not a record".to_vec(), stray] {
        client
            .publish(
                topic.clone(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }
    for _ in 0..100 {
        if broker
            .inbox()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        broker
            .inbox()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    pump.abort();
    // Still answering.
    call(&broker, &agent, T::GetSupportedProto, ping.clone()).await;

    // An agent nobody runs: a timeout, not a hang.
    let request = record::request(&broker.inbox().msg_id(), T::GetSupportedProto, ping);
    let e = broker
        .request(
            "os::012345-NOBODY",
            "usp/agent/nobody",
            false,
            request,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RequestError::Timeout(_)), "{e}");
}
