//! The SASL layer of an AMQP 1.0 connection (AMQP 1.0 part 5.3), run by the channel
//! itself so that checking the credentials can await the registry (see ADR 0003). After
//! an `ok` outcome the stream is handed to fe2o3's acceptor, which then reads the
//! client's AMQP protocol header as after its own SASL layer.

use bytes::BytesMut;
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

/// `AMQP` + protocol id 3 (SASL) + version 1.0.0.
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// `AMQP` + protocol id 0 (AMQP) + version 1.0.0.
pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// Largest SASL frame accepted: a PLAIN response is a few hundred bytes.
const MAX_SASL_FRAME: u32 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client did not start SASL (protocol header {0:?}); SASL PLAIN is required")]
    NoSasl([u8; 8]),
    #[error("malformed SASL frame: {0}")]
    Frame(String),
    #[error("unsupported SASL mechanism {0:?}; only PLAIN is offered")]
    Mechanism(String),
}

/// What the client sent to log in.
pub struct PlainLogin {
    pub response: Vec<u8>,
}

/// Reads the SASL protocol header, offers PLAIN and reads the client's `sasl-init`.
pub async fn read_login<S>(io: &mut S) -> Result<PlainLogin, SaslError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    io.read_exact(&mut header).await?;
    if header != SASL_HEADER {
        // The spec's answer to an unsupported header: ours, then close.
        io.write_all(&SASL_HEADER).await?;
        io.flush().await?;
        return Err(SaslError::NoSasl(header));
    }
    let mechanisms = SaslMechanisms {
        sasl_server_mechanisms: Array::from(vec![Symbol::from("PLAIN")]),
    };
    let mut out = BytesMut::with_capacity(64);
    out.extend_from_slice(&SASL_HEADER);
    encode(Frame::Mechanisms(mechanisms), &mut out)?;
    io.write_all(&out).await?;
    io.flush().await?;

    let frame = match read_frame(io).await {
        Ok(f) => f,
        Err(e @ SaslError::Frame(_)) => {
            // A malformed or oversized frame: a permanent error, then close.
            let _ = send_outcome(io, SaslCode::SysPerm).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    match frame {
        Frame::Init(init) => {
            if init.mechanism.as_str() != "PLAIN" {
                send_outcome(io, SaslCode::Auth).await?;
                return Err(SaslError::Mechanism(init.mechanism.to_string()));
            }
            Ok(PlainLogin {
                response: init
                    .initial_response
                    .map(|b| b.into_vec())
                    .unwrap_or_default(),
            })
        }
        _ => {
            send_outcome(io, SaslCode::Sys).await?;
            Err(SaslError::Frame("expected sasl-init".into()))
        }
    }
}

/// Sends the `sasl-outcome`.
pub async fn send_outcome<S>(io: &mut S, code: SaslCode) -> Result<(), SaslError>
where
    S: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(32);
    encode(
        Frame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }),
        &mut out,
    )?;
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// Appends one length-prefixed SASL frame.
fn encode(frame: Frame, out: &mut BytesMut) -> Result<(), SaslError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    FrameCodec {}
        .encode(frame, out)
        .map_err(|e| SaslError::Frame(format!("{e:?}")))?;
    let len =
        u32::try_from(out.len() - start).map_err(|_| SaslError::Frame("frame too large".into()))?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

async fn read_frame<S>(io: &mut S) -> Result<Frame, SaslError>
where
    S: AsyncRead + Unpin,
{
    let mut size = [0u8; 4];
    io.read_exact(&mut size).await?;
    let size = u32::from_be_bytes(size);
    if !(8..=MAX_SASL_FRAME).contains(&size) {
        return Err(SaslError::Frame(format!(
            "frame size {size} is outside 8..={MAX_SASL_FRAME}"
        )));
    }
    let mut buf = vec![0u8; size as usize];
    buf[..4].copy_from_slice(&size.to_be_bytes());
    io.read_exact(&mut buf[4..]).await?;
    decode_frame(&buf)
}

/// Decodes one whole SASL frame (`frame` holds exactly the frame, size field included)
/// as the server does before login: every length inside is first bounded by the bytes
/// there ([`super::bounded::check_frame`]; serde_amqp allocates what a length field
/// claims, ADR 0008), then serde_amqp decodes it. For the fuzz targets too.
pub fn decode_frame(frame: &[u8]) -> Result<Frame, SaslError> {
    super::bounded::check_frame(frame, MAX_SASL_FRAME)
        .map_err(|e| SaslError::Frame(e.to_string()))?;
    let doff = usize::from(frame[4]);
    // The codec wants the header after the size with doff 2; an extended header (legal,
    // never sent by real clients) is skipped.
    let mut buf = BytesMut::with_capacity(frame.len() - 4);
    buf.extend_from_slice(&[2]);
    buf.extend_from_slice(&frame[5..8]);
    buf.extend_from_slice(&frame[doff * 4..]);
    FrameCodec {}
        .decode(&mut buf)
        .map_err(|e| SaslError::Frame(format!("{e:?}")))?
        .ok_or_else(|| SaslError::Frame("empty frame".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::primitives::Binary;
    use fe2o3_amqp::types::sasl::SaslInit;

    #[tokio::test]
    async fn offers_plain_and_reads_the_initial_response() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move { read_login(&mut server).await.map(|l| l.response) });
        client.write_all(&SASL_HEADER).await.unwrap();
        let mut header = [0u8; 8];
        client.read_exact(&mut header).await.unwrap();
        assert_eq!(header, SASL_HEADER);
        match read_frame(&mut client).await.unwrap() {
            Frame::Mechanisms(m) => assert_eq!(m.sasl_server_mechanisms.0[0].as_str(), "PLAIN"),
            other => panic!("{other:?}"),
        }
        let mut out = BytesMut::new();
        encode(
            Frame::Init(SaslInit {
                mechanism: Symbol::from("PLAIN"),
                initial_response: Some(Binary::from(b"\0u\0p".to_vec())),
                hostname: None,
            }),
            &mut out,
        )
        .unwrap();
        client.write_all(&out).await.unwrap();
        assert_eq!(srv.await.unwrap().unwrap(), b"\0u\0p".to_vec());
    }

    #[tokio::test]
    async fn answers_a_plain_amqp_header_with_the_sasl_header() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move { read_login(&mut server).await.map(|_| ()) });
        client.write_all(&AMQP_HEADER).await.unwrap();
        let mut header = [0u8; 8];
        client.read_exact(&mut header).await.unwrap();
        assert_eq!(header, SASL_HEADER);
        assert!(matches!(srv.await.unwrap(), Err(SaslError::NoSasl(_))));
    }

    /// Issue 15: a 32-byte sasl-init whose mechanism claims 1 GiB is refused from the
    /// bytes there (nothing of the claim allocated) and answered `sys-perm`.
    #[tokio::test]
    async fn a_sasl_init_claiming_more_than_it_holds_is_refused_with_an_outcome() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move { read_login(&mut server).await.map(|_| ()) });
        client.write_all(&SASL_HEADER).await.unwrap();
        let mut header = [0u8; 8];
        client.read_exact(&mut header).await.unwrap();
        let _mechanisms = read_frame(&mut client).await.unwrap();
        client
            .write_all(&super::super::bounded::tests::BOMB)
            .await
            .unwrap();
        let e = srv.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("claims 1073741824 bytes"), "{e}");
        match read_frame(&mut client).await.unwrap() {
            Frame::Outcome(o) => assert_eq!(o.code, SaslCode::SysPerm),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decode_frame_skips_an_extended_header_and_refuses_bad_offsets() {
        let mut out = BytesMut::new();
        encode(
            Frame::Init(SaslInit {
                mechanism: Symbol::from("PLAIN"),
                initial_response: None,
                hostname: None,
            }),
            &mut out,
        )
        .unwrap();
        assert!(matches!(decode_frame(&out).unwrap(), Frame::Init(_)));
        // The same with a 4-byte extended header.
        let mut ext = out[..8].to_vec();
        ext[4] = 3;
        ext.extend_from_slice(&[9, 9, 9, 9]);
        ext.extend_from_slice(&out[8..]);
        let len = ext.len() as u32;
        ext[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode_frame(&ext).unwrap(), Frame::Init(_)));
        ext[4] = 200;
        assert!(decode_frame(&ext).is_err());
        assert!(decode_frame(&[0, 0, 0, 4]).is_err());
        assert!(decode_frame(&[]).is_err());
    }
}
