//! The TensorBoard event messages `tensorboard` writes, as prost structs:
//! the checked-in equivalent of protoc's output for the fields we use, so
//! the build needs no protoc.
//!
//! Messages, fields and numbers are TensorFlow's (github.com/tensorflow/
//! tensorflow): `Event` and `SessionLog` from tensorflow/core/util/
//! event.proto, `Summary` from tensorflow/core/framework/summary.proto.
//! Both are proto3: a scalar field at its default (0, "") is not written;
//! a oneof member is written whenever it is set.

/// Event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// wall_time = 1: seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// step = 2.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// oneof what { file_version = 3; summary = 5; session_log = 7; ... }.
    #[prost(oneof = "event::What", tags = "3, 5, 7")]
    pub what: Option<event::What>,
}

pub mod event {
    /// Event's `what` oneof (the members we write).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// file_version = 3: "brain.Event:2" in a file's first record.
        #[prost(string, tag = "3")]
        FileVersion(String),
        /// summary = 5.
        #[prost(message, tag = "5")]
        Summary(super::Summary),
        /// session_log = 7.
        #[prost(message, tag = "7")]
        SessionLog(super::SessionLog),
    }
}

/// SessionLog.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// status = 1, a SessionStatus.
    #[prost(enumeration = "SessionStatus", tag = "1")]
    pub status: i32,
}

/// SessionLog.SessionStatus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SessionStatus {
    StatusUnspecified = 0,
    Start = 1,
    Stop = 2,
    Checkpoint = 3,
}

/// Summary.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// value = 1.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<summary::Value>,
}

pub mod summary {
    /// Summary.Value.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        /// tag = 1.
        #[prost(string, tag = "1")]
        pub tag: String,
        /// oneof value { simple_value = 2; image = 4; ... }.
        #[prost(oneof = "value::Value", tags = "2, 4")]
        pub value: Option<value::Value>,
    }

    pub mod value {
        /// Summary.Value's `value` oneof (the members we write).
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// simple_value = 2.
            #[prost(float, tag = "2")]
            SimpleValue(f32),
            /// image = 4.
            #[prost(message, tag = "4")]
            Image(super::Image),
        }
    }

    /// Summary.Image.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        /// height = 1.
        #[prost(int32, tag = "1")]
        pub height: i32,
        /// width = 2.
        #[prost(int32, tag = "2")]
        pub width: i32,
        /// colorspace = 3: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
        #[prost(int32, tag = "3")]
        pub colorspace: i32,
        /// encoded_image_string = 4: the PNG file's bytes.
        #[prost(bytes = "vec", tag = "4")]
        pub encoded_image_string: Vec<u8>,
    }
}
