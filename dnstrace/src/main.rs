fn main() {
    let obj = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dnstrace"));
    println!("{}", obj.len());
}
