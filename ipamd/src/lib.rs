//! stub
pub mod rpc {
    tonic::include_proto!("rpc");
}
