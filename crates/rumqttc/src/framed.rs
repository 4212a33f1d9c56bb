use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mqttbytes::{self, v4::*};
use crate::{Incoming, MqttState, StateError};
use std::io;

/// Network transforms packets <-> frames efficiently. It takes
/// advantage of pre-allocation, buffering and vectorization when
/// appropriate to achieve performance
pub struct Network {
    /// Socket for IO
    socket: Box<dyn N>,
    /// Buffered reads
    read: BytesMut,
    /// Maximum packet size
    max_incoming_size: usize,
    /// Maximum readv count
    max_readb_count: usize,
    /// Bytes of an oversized packet still to be discarded
    skip: usize,
}

impl Network {
    pub fn new(socket: impl N + 'static, max_incoming_size: usize) -> Network {
        let socket = Box::new(socket) as Box<dyn N>;
        Network {
            socket,
            read: BytesMut::with_capacity(10 * 1024),
            max_incoming_size,
            max_readb_count: 10,
            skip: 0,
        }
    }

    /// Reads more than 'required' bytes to frame a packet into self.read buffer
    async fn read_bytes(&mut self, required: usize) -> io::Result<usize> {
        let mut total_read = 0;
        loop {
            let read = self.socket.read_buf(&mut self.read).await?;
            if 0 == read {
                return if self.read.is_empty() {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "connection closed by peer",
                    ))
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "connection reset by peer",
                    ))
                };
            }

            total_read += read;
            if total_read >= required {
                return Ok(total_read);
            }
        }
    }

    pub async fn read(&mut self) -> io::Result<Incoming> {
        loop {
            let required = match read(&mut self.read, self.max_incoming_size) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(required)) => required,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            };

            // read more packets until a frame can be created. This function
            // blocks until a frame can be created. Use this in a select! branch
            self.read_bytes(required).await?;
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub async fn readb(&mut self, state: &mut MqttState) -> Result<(), StateError> {
        let mut count = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.read.len());
                let _ = self.read.split_to(n);
                self.skip -= n;
                if self.skip > 0 {
                    if count > 0 {
                        return Ok(());
                    }
                    self.read_bytes(1).await?;
                    continue;
                }
            }
            match read(&mut self.read, self.max_incoming_size) {
                Ok(packet) => {
                    state.handle_incoming_packet(packet)?;

                    count += 1;
                    if count >= self.max_readb_count {
                        return Ok(());
                    }
                }
                // If some packets are already framed, return those
                Err(mqttbytes::Error::InsufficientBytes(_)) if count > 0 => return Ok(()),
                // Wait for more bytes until a frame can be created
                Err(mqttbytes::Error::InsufficientBytes(required)) => {
                    self.read_bytes(required).await?;
                }
                Err(mqttbytes::Error::PayloadSizeLimitExceeded(len)) => {
                    match oversized_publish(&self.read, len) {
                        Ok((head, head_len, frame_len)) => {
                            let _ = self.read.split_to(head_len);
                            self.skip = frame_len - head_len;
                            state.handle_oversized_publish(&head, frame_len)?;
                        }
                        Err(mqttbytes::Error::InsufficientBytes(required)) => {
                            self.read_bytes(required).await?;
                        }
                        Err(e) => return Err(StateError::Deserialization(e)),
                    }
                }
                Err(e) => return Err(StateError::Deserialization(e)),
            };
        }
    }

    pub async fn connect(&mut self, connect: Connect) -> io::Result<usize> {
        let mut write = BytesMut::new();
        let len = match connect.write(&mut write) {
            Ok(size) => size,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        };

        self.socket.write_all(&write[..]).await?;
        Ok(len)
    }

    pub async fn flush(&mut self, write: &mut BytesMut) -> io::Result<()> {
        if write.is_empty() {
            return Ok(());
        }

        self.socket.write_all(&write[..]).await?;
        write.clear();
        Ok(())
    }
}

/// The head of a publish over the size limit at the start of `stream`
/// (fixed header, topic and packet id, with an empty payload), the bytes
/// the head takes and the whole packet's length. Any other oversized
/// packet is an error, as before.
fn oversized_publish(
    stream: &BytesMut,
    remaining_len: usize,
) -> Result<(Publish, usize, usize), mqttbytes::Error> {
    let byte1 = *stream.first().ok_or(mqttbytes::Error::InsufficientBytes(2))?;
    if byte1 >> 4 != 3 {
        return Err(mqttbytes::Error::PayloadSizeLimitExceeded(remaining_len));
    }
    // Remaining length: 1 to 4 bytes of 7 bits after byte1.
    let len_len = stream[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map(|i| i + 1)
        .ok_or(mqttbytes::Error::InsufficientBytes(1))?;
    let fixed_len = 1 + len_len;
    let qos = (byte1 & 0b0110) >> 1;
    let topic_at = fixed_len;
    let topic_len = match stream.get(topic_at..topic_at + 2) {
        Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
        None => return Err(mqttbytes::Error::InsufficientBytes(topic_at + 2 - stream.len())),
    };
    let head_len = topic_at + 2 + topic_len + if qos > 0 { 2 } else { 0 };
    if stream.len() < head_len {
        return Err(mqttbytes::Error::InsufficientBytes(head_len - stream.len()));
    }
    let frame_len = fixed_len + remaining_len;
    if head_len > frame_len {
        return Err(mqttbytes::Error::MalformedPacket);
    }
    let mut head = BytesMut::from(&stream[..head_len]);
    // Rewrite the remaining length to the head's, so it parses alone.
    let mut header = BytesMut::new();
    header.extend_from_slice(&[byte1]);
    let mut rest = head_len - fixed_len;
    loop {
        let mut b = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            b |= 0x80;
        }
        header.extend_from_slice(&[b]);
        if rest == 0 {
            break;
        }
    }
    header.extend_from_slice(&head.split_off(fixed_len));
    let fixed_header = mqttbytes::check(header.iter(), usize::MAX)?;
    let head = Publish::read(fixed_header, header.freeze())?;
    Ok((head, head_len, frame_len))
}

pub trait N: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> N for T where T: AsyncRead + AsyncWrite + Send + Unpin {}
