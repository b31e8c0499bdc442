//! The smallest DNS client that `tsbridge check` needs: one A query over UDP and the A
//! records of its answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Why a query got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("not a DNS name: {0:?}")]
    BadName(String),
    #[error("malformed DNS answer")]
    Malformed,
    #[error("DNS error rcode {0}")]
    Rcode(u8),
    #[error("DNS answer for another question")]
    OtherQuestion,
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One DNS A query over UDP; the A records of the answer.
pub async fn query_a(
    server: SocketAddr,
    name: &str,
    limit: Duration,
) -> Result<Vec<Ipv4Addr>, DnsError> {
    let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
    let q = encode_query(id, name)?;
    let any = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(any).await?;
    sock.send_to(&q, server).await?;
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(limit, sock.recv(&mut buf))
        .await
        .map_err(|_| DnsError::Timeout(limit))??;
    decode_a(id, &q, &buf[..n])
}

pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName(name.to_owned()));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(q)
}

/// The A records of an answer to `query` (whose question it must repeat).
pub fn decode_a(id: u16, query: &[u8], r: &[u8]) -> Result<Vec<Ipv4Addr>, DnsError> {
    if r.len() < 12 || r[0..2] != id.to_be_bytes() {
        return Err(DnsError::Malformed);
    }
    let rcode = r[3] & 0x0f;
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let an = u16::from_be_bytes([r[6], r[7]]);
    if r.get(12..query.len()) != query.get(12..) {
        return Err(DnsError::OtherQuestion);
    }
    let mut i = query.len();
    let mut out = Vec::new();
    for _ in 0..an {
        // The owner name: a compression pointer or labels.
        if r.get(i).is_some_and(|b| b & 0xc0 == 0xc0) {
            i += 2;
        } else {
            while let Some(&len) = r.get(i) {
                if len == 0 {
                    break;
                }
                i += usize::from(len) + 1;
            }
            i += 1;
        }
        let Some(rr) = r.get(i..i + 10) else { break };
        let ty = u16::from_be_bytes([rr[0], rr[1]]);
        let len = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
        i += 10;
        if ty == 1 && len == 4 {
            if let Some(a) = r.get(i..i + 4) {
                out.push(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
            }
        }
        i += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_query_round_trip() {
        let q = encode_query(0x1234, "peer.tail.ts.net.").unwrap();
        // An answer: header, the question, one A record with a pointer to the name.
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 100, 64, 0, 7]);
        assert_eq!(
            decode_a(0x1234, &q, &r).unwrap(),
            vec![Ipv4Addr::new(100, 64, 0, 7)]
        );
        assert!(matches!(decode_a(0x4321, &q, &r), Err(DnsError::Malformed)));
        r[3] = 0x83; // NXDOMAIN
        let e = decode_a(0x1234, &q, &r).unwrap_err();
        assert!(matches!(e, DnsError::Rcode(3)), "{e}");
        assert!(e.to_string().contains("rcode 3"));
        assert!(matches!(encode_query(1, "a..b"), Err(DnsError::BadName(_))));
        // Truncated answers never panic.
        for n in 0..r.len() {
            let _ = decode_a(0x1234, &q, &r[..n]);
        }
    }
}
