use std::collections::VecDeque;
use std::ops::{ControlFlow, Deref, DerefMut};

use bytes::{Buf, Bytes, BytesMut};

use crate::error::Error;
use crate::io::MySqlBufExt;
use crate::io::{ProtocolDecode, ProtocolEncode};
use crate::net::{BufferedSocket, Socket};
use crate::protocol::response::{EofPacket, ErrPacket, OkPacket, Status};
use crate::protocol::statement::{Prepare, PrepareOk, StmtClose};
use crate::protocol::{Capabilities, Packet};
use crate::{MySqlConnectOptions, MySqlDatabaseError};

pub struct MySqlStream<S = Box<dyn Socket>> {
    // Wrapping the socket in `Box` allows us to unsize in-place.
    pub(crate) socket: BufferedSocket<S>,
    pub(crate) server_version: (u16, u16, u16),
    pub(super) capabilities: Capabilities,
    pub(crate) sequence_id: u8,
    pub(crate) waiting: VecDeque<Waiting>,
    pub(crate) is_tls: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    // waiting for a result set
    Result,

    // waiting for a row within a result set
    Row,

    // chat-server patch: waiting for the answer to a COM_STMT_PREPARE (its
    // PrepareOk, or an error)
    Prepare,

    // chat-server patch: waiting for the rest of that answer, `packets`
    // definitions of the statement's parameters and columns
    PrepareRest { statement: u32, packets: usize },
}

impl<S: Socket> MySqlStream<S> {
    pub(crate) fn with_socket(options: &MySqlConnectOptions, socket: S) -> Self {
        let mut capabilities = Capabilities::PROTOCOL_41
            | Capabilities::IGNORE_SPACE
            | Capabilities::DEPRECATE_EOF
            | Capabilities::FOUND_ROWS
            | Capabilities::TRANSACTIONS
            | Capabilities::SECURE_CONNECTION
            | Capabilities::PLUGIN_AUTH_LENENC_DATA
            | Capabilities::MULTI_STATEMENTS
            | Capabilities::MULTI_RESULTS
            | Capabilities::PLUGIN_AUTH
            | Capabilities::PS_MULTI_RESULTS
            | Capabilities::SSL;

        if options.database.is_some() {
            capabilities |= Capabilities::CONNECT_WITH_DB;
        }

        Self {
            waiting: VecDeque::new(),
            capabilities,
            server_version: (0, 0, 0),
            sequence_id: 0,
            socket: BufferedSocket::new(socket),
            is_tls: false,
        }
    }

    pub(crate) async fn wait_until_ready(&mut self) -> Result<(), Error> {
        if !self.socket.write_buffer().is_empty() {
            self.socket.flush().await?;
        }

        while !self.waiting.is_empty() {
            // chat-server patch: a preparation whose caller is gone.
            while matches!(
                self.waiting.front(),
                Some(Waiting::Prepare | Waiting::PrepareRest { .. })
            ) {
                self.skip_prepare_answer().await?;
            }

            while self.waiting.front() == Some(&Waiting::Row) {
                let packet = self.recv_packet().await?;

                if !packet.is_empty() && packet[0] == 0xfe && packet.len() < 9 {
                    let eof = packet.eof(self.capabilities)?;

                    if eof.status.contains(Status::SERVER_MORE_RESULTS_EXISTS) {
                        *self.waiting.front_mut().unwrap() = Waiting::Result;
                    } else {
                        self.waiting.pop_front();
                    };
                }
            }

            while self.waiting.front() == Some(&Waiting::Result) {
                let packet = self.recv_packet().await?;

                if !packet.is_empty() && (packet[0] == 0x00 || packet[0] == 0xff) {
                    let ok = packet.ok()?;

                    if !ok.status.contains(Status::SERVER_MORE_RESULTS_EXISTS) {
                        self.waiting.pop_front();
                    }
                } else {
                    *self.waiting.front_mut().unwrap() = Waiting::Row;
                    self.skip_result_metadata(packet).await?;
                }
            }
        }

        Ok(())
    }

    pub(crate) async fn send_packet<'en, T>(&mut self, payload: T) -> Result<(), Error>
    where
        T: ProtocolEncode<'en, Capabilities>,
    {
        self.sequence_id = 0;
        self.write_packet(payload)?;
        self.flush().await?;
        Ok(())
    }

    /// chat-server patch: sends a command whose answer is a result set or
    /// an OK (a query, an execution, a ping), owed from the moment it is
    /// written: a caller dropped while it is sent or read leaves the answer
    /// to `wait_until_ready`, which reads it before the next command.
    /// Upstream marked it owed before the command was sent (before a
    /// preparation sent ahead of it, so that answer was read as this one).
    pub(crate) async fn send_request<'en, T>(&mut self, payload: T) -> Result<(), Error>
    where
        T: ProtocolEncode<'en, Capabilities>,
    {
        self.send_owing(payload, Waiting::Result).await
    }

    /// chat-server patch: sends a COM_STMT_PREPARE, its answer owed as
    /// `send_request`'s is; `recv_prepare_ok` and `recv_prepare_rest` read
    /// it.
    pub(crate) async fn send_prepare(&mut self, query: &str) -> Result<(), Error> {
        self.send_owing(Prepare { query }, Waiting::Prepare).await
    }

    async fn send_owing<'en, T>(&mut self, payload: T, answer: Waiting) -> Result<(), Error>
    where
        T: ProtocolEncode<'en, Capabilities>,
    {
        self.sequence_id = 0;
        self.write_packet(payload)?;
        self.waiting.push_back(answer);
        self.flush().await?;
        Ok(())
    }

    /// chat-server patch: reads a preparation's PrepareOk; the definitions
    /// that follow it are owed from then on. An error answer is returned as
    /// the error, and owes nothing more.
    pub(crate) async fn recv_prepare_ok(&mut self) -> Result<PrepareOk, Error> {
        let ok: PrepareOk = self.recv().await?;
        let eof = usize::from(!self.capabilities.contains(Capabilities::DEPRECATE_EOF));
        // Each list of definitions, when not empty, ends with an EOF
        // packet unless the EOF packets are deprecated.
        let list = |n: u16| if n > 0 { usize::from(n) + eof } else { 0 };
        if let Some(front) = self.waiting.front_mut() {
            *front = Waiting::PrepareRest {
                statement: ok.statement_id,
                packets: list(ok.params) + list(ok.columns),
            };
        }
        Ok(ok)
    }

    /// chat-server patch: the next packet of the definitions that follow a
    /// preparation's PrepareOk, or `None` once every one has been read.
    /// Counted as each is read, so a caller dropped between two leaves
    /// `wait_until_ready` the right number to skip.
    pub(crate) async fn recv_prepare_rest(&mut self) -> Result<Option<Packet<Bytes>>, Error> {
        match self.waiting.front() {
            Some(Waiting::PrepareRest { packets: 0, .. }) => {
                self.waiting.pop_front();
                Ok(None)
            }
            Some(Waiting::PrepareRest { .. }) => {
                let packet = self.recv_packet().await?;
                if let Some(Waiting::PrepareRest { packets, .. }) = self.waiting.front_mut() {
                    *packets -= 1;
                }
                Ok(Some(packet))
            }
            _ => Err(err_protocol!("no preparation's answer is owed")),
        }
    }

    /// chat-server patch: reads what is still owed of the answer to a
    /// preparation whose caller is gone, and closes the statement it made:
    /// that caller never learned of it, so it would stay prepared on the
    /// server for as long as the connection lives.
    async fn skip_prepare_answer(&mut self) -> Result<(), Error> {
        if self.waiting.front() == Some(&Waiting::Prepare) {
            match self.recv_prepare_ok().await {
                Ok(_) => {}
                // The preparation failed; `recv_packet` took it off `waiting`.
                Err(Error::Database(_)) => return Ok(()),
                Err(error) => return Err(error),
            }
        }
        let Some(&Waiting::PrepareRest { statement, .. }) = self.waiting.front() else {
            return Ok(());
        };
        while self.recv_prepare_rest().await?.is_some() {}
        self.send_packet(StmtClose { statement }).await
    }

    pub(crate) fn write_packet<'en, T>(&mut self, payload: T) -> Result<(), Error>
    where
        T: ProtocolEncode<'en, Capabilities>,
    {
        self.socket
            .write_with(Packet(payload), (self.capabilities, &mut self.sequence_id))
    }

    async fn recv_packet_part(&mut self) -> Result<Bytes, Error> {
        // https://dev.mysql.com/doc/dev/mysql-server/8.0.12/page_protocol_basic_packets.html
        // https://mariadb.com/kb/en/library/0-packet/#standard-packet

        // chat-server patch: the header and its payload taken from the
        // buffer together, once both are in it, so that a caller dropped
        // while the payload is on its way leaves the packet whole for the
        // next read (upstream took the header first, and the next read
        // then took the payload's first bytes for a header).
        let mut packet = self
            .socket
            .try_read(|buf| {
                let Some(header) = buf.get(..4) else {
                    return Ok(ControlFlow::Continue(4));
                };
                let payload = u32::from_le_bytes([header[0], header[1], header[2], 0]);
                let length = 4 + payload as usize;
                Ok(if buf.len() < length {
                    ControlFlow::Continue(length)
                } else {
                    ControlFlow::Break(buf.split_to(length).freeze())
                })
            })
            .await?;
        let mut header = packet.split_to(4);

        header.advance(3); // the payload's length, read above
        let sequence_id = header.get_u8();

        self.sequence_id = sequence_id.wrapping_add(1);

        let payload: Bytes = packet;

        // TODO: packet compression

        Ok(payload)
    }

    // receive the next packet from the database server
    // may block (async) on more data from the server
    pub(crate) async fn recv_packet(&mut self) -> Result<Packet<Bytes>, Error> {
        let payload = self.recv_packet_part().await?;
        let payload = if payload.len() < 0xFF_FF_FF {
            payload
        } else {
            let mut final_payload = BytesMut::with_capacity(0xFF_FF_FF * 2);
            final_payload.extend_from_slice(&payload);

            drop(payload); // we don't need the allocation anymore

            let mut last_read = 0xFF_FF_FF;
            while last_read == 0xFF_FF_FF {
                let part = self.recv_packet_part().await?;
                last_read = part.len();
                final_payload.extend_from_slice(&part);
            }
            final_payload.into()
        };

        if payload
            .first()
            .ok_or(err_protocol!("Packet empty"))?
            .eq(&0xff)
        {
            self.waiting.pop_front();

            // instead of letting this packet be looked at everywhere, we check here
            // and emit a proper Error
            return Err(
                MySqlDatabaseError(ErrPacket::decode_with(payload, self.capabilities)?).into(),
            );
        }

        Ok(Packet(payload))
    }

    pub(crate) async fn recv<'de, T>(&mut self) -> Result<T, Error>
    where
        T: ProtocolDecode<'de, Capabilities>,
    {
        self.recv_packet().await?.decode_with(self.capabilities)
    }

    pub(crate) async fn recv_ok(&mut self) -> Result<OkPacket, Error> {
        self.recv_packet().await?.ok()
    }

    pub(crate) async fn maybe_recv_eof(&mut self) -> Result<Option<EofPacket>, Error> {
        if self.capabilities.contains(Capabilities::DEPRECATE_EOF) {
            Ok(None)
        } else {
            self.recv().await.map(Some)
        }
    }

    async fn skip_result_metadata(&mut self, mut packet: Packet<Bytes>) -> Result<(), Error> {
        let num_columns: u64 = packet.get_uint_lenenc()?; // column count

        for _ in 0..num_columns {
            let _ = self.recv_packet().await?;
        }

        self.maybe_recv_eof().await?;

        Ok(())
    }

    pub fn boxed_socket(self) -> MySqlStream {
        MySqlStream {
            socket: self.socket.boxed(),
            server_version: self.server_version,
            capabilities: self.capabilities,
            sequence_id: self.sequence_id,
            waiting: self.waiting,
            is_tls: self.is_tls,
        }
    }
}

impl<S> Deref for MySqlStream<S> {
    type Target = BufferedSocket<S>;

    fn deref(&self) -> &Self::Target {
        &self.socket
    }
}

impl<S> DerefMut for MySqlStream<S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.socket
    }
}
