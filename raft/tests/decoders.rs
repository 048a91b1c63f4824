//! Property tests for what decodes bytes from the network or the disk (issue 13): whatever
//! the bytes, decoding returns an error instead of panicking or allocating without bound,
//! and what we encode decodes back to itself.

use cookie_raft::command::{Command, MAX_ID_BYTES};
use cookie_raft::{codec, Request, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proptest::prelude::*;

fn command() -> impl Strategy<Value = Command> {
    let id = "\\PC{0,40}";
    let leaf = prop_oneof![
        (id, "\\PC{0,200}").prop_map(|(id, object)| Command::Create { id, object }),
        (
            id,
            "\\PC{0,200}",
            proptest::option::of(id),
            any::<u64>(),
            any::<Option<u64>>()
        )
            .prop_map(|(id, patch, rename_to, now, if_match)| Command::Update {
                id,
                patch,
                rename_to,
                now,
                if_match,
            }),
        (id, any::<Option<u64>>()).prop_map(|(id, if_match)| Command::Delete { id, if_match }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<(u64, u64)>(), 0..5)
        )
            .prop_map(|(cluster, members)| Command::Register { cluster, members }),
        (any::<u64>(), any::<u32>()).prop_map(|(now_ms, max)| Command::Expire { now_ms, max }),
    ];
    leaf.prop_recursive(2, 8, 1, |inner| {
        (
            "[!-~]{0,130}",
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>(),
            inner,
        )
            .prop_map(
                |(key, fingerprint, now_ms, expires_ms, cmd)| Command::Keyed {
                    key,
                    fingerprint,
                    now_ms,
                    expires_ms,
                    cmd: Box::new(cmd),
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any bytes as any message a peer sends: an error or a value, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Request>(&bytes);
        let _ = codec::decode::<Vec<Command>>(&bytes);
        let _ = codec::decode::<AppendEntriesRequest<TypeConfig>>(&bytes);
        let _ = codec::decode::<InstallSnapshotRequest<TypeConfig>>(&bytes);
        let _ = codec::decode::<VoteRequest<u64>>(&bytes);
        let _ = cookie_raft::sm::validate_snapshot(&bytes);
    }

    /// A length prefix that claims gigabytes is refused for want of bytes, not allocated.
    #[test]
    fn a_huge_length_prefix_is_an_error(claim in 1u64 << 32.., tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        // bincode's varint: 253 = u64 follows.
        let mut bytes = vec![253];
        bytes.extend_from_slice(&claim.to_le_bytes());
        bytes.extend_from_slice(&tail);
        prop_assert!(codec::decode::<Vec<Command>>(&bytes).is_err());
        prop_assert!(codec::decode::<Request>(&bytes).is_err());
    }

    /// Every command survives the log's encoding, and the peer check never panics on one.
    #[test]
    fn commands_round_trip_and_the_peer_check_is_total(cmds in proptest::collection::vec(command(), 0..6)) {
        let req = Request { cmds };
        let bytes = codec::encode(&req).unwrap();
        prop_assert_eq!(codec::decode::<Request>(&bytes).unwrap(), req.clone());
        for cmd in &req.cmds {
            let _ = cmd.check_client_write();
        }
    }

    /// What a client could have sent is accepted by the peer check; ids over the limit never.
    #[test]
    fn api_built_creates_pass_the_peer_check(id in "\\PC{1,60}", user in 1u64..1_000_000, now in any::<u64>()) {
        let body = serde_json::json!({"cookie": id, "user_id": user}).to_string();
        let cmd = Command::create(body.as_bytes(), now).unwrap();
        prop_assert_eq!(cmd.check_client_write(), Ok(()));
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let body = serde_json::json!({"cookie": long, "user_id": user}).to_string();
        prop_assert!(Command::create(body.as_bytes(), now).is_err());
    }
}
