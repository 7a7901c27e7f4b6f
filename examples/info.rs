//! Prints the device, the libtorch version and the crate versions, and runs
//! one small op on the device.
//!
//! Run with: `scripts/libtorch-env.sh cargo run --example info`

use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let device = Device::cuda_if_available();
    println!("damro {}", damro::VERSION);
    println!("libtorch {}", damro::LIBTORCH_VERSION);
    println!(
        "cuda available: {} ({} device(s))",
        tch::Cuda::is_available(),
        tch::Cuda::device_count()
    );
    println!("libtorch threads: {}", tch::get_num_threads());
    println!("device: {device:?}");
    let x = Tensor::f_arange(6, (Kind::Float, device))?.f_view([2, 3])?;
    let y = x.f_matmul(&x.f_transpose(0, 1)?)?;
    println!(
        "check: [[0,1,2],[3,4,5]] times its transpose = {:?}",
        Vec::<f32>::try_from(y.f_flatten(0, -1)?)?
    );
    Ok(())
}
